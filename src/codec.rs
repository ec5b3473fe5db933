//! The codec of the generated `adgate.v1` services: prost, with a smaller encode buffer.
//!
//! tonic's default codec gives every response stream an 8 KiB buffer when it opens, and the
//! buffer lives as long as the stream: each encoded message is split off its front, and the
//! rest of the allocation stays with the stream. With 10,000 WatchProgress streams open that
//! was 80 MB of the gateway's memory for messages of a few hundred bytes. A stream here starts
//! with [`ENCODE_BUFFER`] bytes, which holds a typical job message; a larger one (a
//! BatchStatus of 100 jobs) grows the buffer as it is written. Decoding keeps tonic's
//! defaults (a request's buffer goes with its call).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The first allocation of a response stream's encode buffer.
pub const ENCODE_BUFFER: usize = 1024;

/// A response is handed to the transport once this much is encoded (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `tonic_prost::ProstCodec` with an encode buffer of [`ENCODE_BUFFER`] bytes.
#[derive(Debug, Clone)]
pub struct GrpcCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for GrpcCodec<T, U> {
    fn default() -> Self {
        GrpcCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for GrpcCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}
