"""moto's S3 server on :9000 that keeps its buckets on disk, as MinIO keeps them on its volume.

moto holds objects in memory; this loads DIR/<bucket>/<key> at start and writes every object back to
DIR when Docker stops the container (SIGTERM), so `docker compose down` then `up` keeps the results.
"""

import shutil
import signal
import sys
import threading
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

DATA = Path(sys.argv[1])
server = ThreadedMotoServer(ip_address="0.0.0.0", port=9000)
server.start()
s3 = boto3.client(
    "s3",
    endpoint_url="http://127.0.0.1:9000",
    region_name="us-east-1",
    aws_access_key_id="standin",
    aws_secret_access_key="standin",
)
for bucket in sorted(p for p in DATA.iterdir() if p.is_dir()) if DATA.exists() else []:
    s3.create_bucket(Bucket=bucket.name)
    for path in sorted(p for p in bucket.rglob("*") if p.is_file()):
        s3.put_object(Bucket=bucket.name, Key=str(path.relative_to(bucket)), Body=path.read_bytes())
    print(f"s3 stand-in: loaded bucket {bucket.name}", flush=True)
print("s3 stand-in: serving on :9000", flush=True)

stopped = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopped.set())
signal.signal(signal.SIGINT, lambda *_: stopped.set())
stopped.wait()
for bucket in s3.list_buckets()["Buckets"]:
    name = bucket["Name"]
    shutil.rmtree(DATA / name, ignore_errors=True)  # deleted objects stay deleted
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            target = DATA / name / obj["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3.get_object(Bucket=name, Key=obj["Key"])["Body"].read())
    (DATA / name).mkdir(parents=True, exist_ok=True)
print("s3 stand-in: saved, stopping", flush=True)
server.stop()
