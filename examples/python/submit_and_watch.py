#!/usr/bin/env python3
"""Submit a mixed batch to adgate and follow it to the end, the way a Python service would.

Usage: ./generate.sh && python3 submit_and_watch.py [--target localhost:50051] [--token T]
Exits 0 when every job reached a terminal state and at least one completed with an output.
"""
import argparse
import os
import sys
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

import grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from adgate.v1 import gateway_pb2 as pb  # noqa: E402
from adgate.v1 import gateway_pb2_grpc as rpc  # noqa: E402


def struct(d):
    s = struct_pb2.Struct()
    s.update(d)
    return s


def mixed_batch():
    return [
        pb.JobSpec(
            client_ref="py-sal-1",
            labels={"campaign": "spring"},
            staticadslab=pb.StaticAdsLabImageAd(
                design_template_id="dt_a1b2c3d4e5f67890",
                brand_id="brand_a1b2c3d4e5f67890",
                product_id="prod_a1b2c3d4e5f67890",
                audience_id="aud_a1b2c3d4e5f67890",
                prompt="sunny, upbeat",
            ),
        ),
        pb.JobSpec(
            client_ref="py-pictify-1",
            pictify=pb.PictifyRender(
                template_uid="tmpl_blog_card",
                variables=struct({"title": "Hello from Python", "author": "adgate"}),
                format=pb.PICTIFY_FORMAT_PNG,
            ),
        ),
        pb.JobSpec(
            client_ref="py-abyssale-1",
            abyssale=pb.AbyssaleGeneration(
                design_id="8c3d2a8e-5b1f-4c1e-9d55-0f2e4b6a7c10",
                format_names=["facebook-feed", "instagram-post"],
                elements=struct({"primary_text": {"payload": "New season"}}),
            ),
        ),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="localhost:50051")
    ap.add_argument("--token", default=os.environ.get("ADGATE_TOKEN", ""))
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []

    with grpc.insecure_channel(args.target) as channel:
        stub = rpc.GatewayServiceStub(channel)
        # A request id makes the submit safe to retry: the same id returns the same jobs.
        req = pb.SubmitRequest(request_id=str(uuid.uuid4()), jobs=mixed_batch())
        resp = stub.Submit(req, metadata=metadata, timeout=10)
        again = stub.Submit(req, metadata=metadata, timeout=10)
        assert list(again.job_ids) == list(resp.job_ids), "request_id replay returned new jobs"
        print(f"batch {resp.batch_id}: {len(resp.job_ids)} jobs")

        last = {}
        stream = stub.WatchProgress(
            pb.WatchProgressRequest(batch_id=resp.batch_id),
            metadata=metadata,
            timeout=args.timeout,
        )
        for msg in stream:
            if msg.WhichOneof("event") != "job":
                continue
            job = msg.job
            last[job.id] = job
            pct = job.progress.percentage if job.HasField("progress") else 0.0
            print(f"{job.id} {job.provider:<12} {pb.JobState.Name(job.state):<22} {pct:5.1f}%")

    terminal = {pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}
    if set(last) != set(resp.job_ids) or any(j.state not in terminal for j in last.values()):
        print("stream ended before every job was terminal", file=sys.stderr)
        return 1
    completed = [j for j in last.values() if j.state == pb.JOB_STATE_COMPLETED]
    for j in completed:
        for o in j.outputs:
            print(f"  {j.client_ref}: {o.url} ({o.width}x{o.height} {o.mime_type})")
    return 0 if completed and all(j.outputs for j in completed) else 1


if __name__ == "__main__":
    sys.exit(main())
