//! The two asynchronous resources StaticAdsLab has [SEED-1] (image ads and design templates),
//! which kind a provider reference names, and reading many of them by id, page by page.

use std::collections::HashMap;

use adgate_generator::transport::Effect;
use adgate_generator::{GenError, ProviderUpdate, RateLimitSnapshot};
use serde::Deserialize;

use crate::error::{malformed, rate_snapshot};
use crate::wire::{DesignTemplate, ImageAd};
use crate::{MAX_IDS_PER_POLL, StaticAdsLab, spec};

/// The two asynchronous resources [SEED-1]: image ads (`ia_…`) and design templates (`dt_…`).
/// A job's provider reference is the resource id, so its prefix says which one it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    ImageAd,
    DesignTemplate,
}

impl Kind {
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Self::ImageAd => "ia_",
            Self::DesignTemplate => "dt_",
        }
    }

    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::ImageAd => "image-ads",
            Self::DesignTemplate => "design-templates",
        }
    }

    pub(crate) fn list_name(self) -> &'static str {
        match self {
            Self::ImageAd => "image-ad list",
            Self::DesignTemplate => "design-template list",
        }
    }

    /// Whether `s` can be an id of this kind; anything else is never sent in a URL.
    pub(crate) fn owns(self, s: &str) -> bool {
        s.len() > 3
            && s.len() <= spec::MAX_ID_LEN
            && s.starts_with(self.prefix())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }
}

/// Whether `s` can be an image-ad id (`ia_…`).
pub(crate) fn is_ad_id(s: &str) -> bool {
    Kind::ImageAd.owns(s)
}

/// A resource read by id in a list.
pub(crate) trait Resource: serde::de::DeserializeOwned {
    fn id(&self) -> &str;
    fn to_update(&self) -> ProviderUpdate;
}

impl Resource for ImageAd {
    fn id(&self) -> &str {
        &self.id
    }
    fn to_update(&self) -> ProviderUpdate {
        ImageAd::to_update(self)
    }
}

impl Resource for DesignTemplate {
    fn id(&self) -> &str {
        &self.id
    }
    fn to_update(&self) -> ProviderUpdate {
        DesignTemplate::to_update(self)
    }
}

/// The list envelope `{data, has_more, meta}` [SAL:reference/pagination]. A body without
/// `has_more` is read as the last page (a server that does not page).
#[derive(Debug, Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct Page<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
}

impl StaticAdsLab {
    /// Every resource of `ask` the provider returns for `GET /v1/<kind.path>?ids=…`,
    /// following its pages. The list endpoint pages with `limit` (default 20, max 100) and
    /// `has_more`, and the cursor is `starting_after=<last id>` [SAL:reference/pagination];
    /// whether `ids=` obeys that is open (providers.md §6 q4), so we read it the safe way: ask
    /// for a page as large as the id set (`limit` = ids asked, at most 100 by
    /// `MAX_IDS_PER_POLL`), and when a page still says `has_more` ask again after its last id.
    /// Only the answer of the last page makes an omitted id absent; an error on any page fails
    /// the whole poll (the engine retries), so no id is ever reported NotFound from an
    /// incomplete answer. Extra pages only happen against a server that serves fewer than
    /// `limit`; each is one more request.
    pub(crate) async fn fetch_ids<T: Resource>(
        &self,
        kind: Kind,
        ask: &[&str],
    ) -> Result<(HashMap<String, T>, Option<RateLimitSnapshot>), GenError> {
        let ids = ask.join(",");
        let limit = ask.len().min(MAX_IDS_PER_POLL);
        let mut found: HashMap<String, T> = HashMap::new();
        let mut rate = None;
        let mut cursor: Option<String> = None;
        // A page that says `has_more` must carry at least one new resource, so the id set
        // bounds the number of pages; the extra turn reads the final page.
        for _ in 0..=ask.len() {
            let mut url = format!("{}/v1/{}?ids={ids}&limit={limit}", self.base, kind.path());
            if let Some(after) = &cursor {
                url.push_str("&starting_after=");
                url.push_str(after);
            }
            let (_, headers, bytes) = self.exchange(self.http.get(url), Effect::Read).await?;
            rate = rate_snapshot(&headers).or(rate);
            let page: Page<T> =
                serde_json::from_slice(&bytes).map_err(|e| malformed(kind.list_name(), e))?;
            let last = page.data.last().map(|r| r.id().to_owned());
            let mut fresh = false;
            for r in page.data {
                fresh |= found.insert(r.id().to_owned(), r).is_none();
            }
            if !page.has_more {
                return Ok((found, rate));
            }
            // `has_more` with nothing new (an empty page, or the same page again) would loop
            // for ever; the cursor must be an id we may put in a URL.
            match last {
                Some(id) if fresh && kind.owns(&id) => cursor = Some(id),
                _ => {
                    return Err(GenError::transient(
                        "StaticAdsLab said has_more but the page did not advance",
                    ));
                }
            }
        }
        Err(GenError::transient(
            "StaticAdsLab kept paging past the number of ids asked for",
        ))
    }
}
