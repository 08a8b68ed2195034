"""boto3 (the newest release, from the venv .ci/install-boto3.sh makes) against a nargate gateway.

Run by tests/boto3.rs, which starts the gateway over a real Garage, imports fixture caches into
FIXTURE_BUCKET and passes everything by environment variables:

  NARGATE_ENDPOINT                      the gateway, http://127.0.0.1:PORT
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY  the gateway's key pair
  BUCKET                                a bucket this script creates
  FIXTURE_BUCKET, FIXTURE_NAR_KEY, FIXTURE_NAR  a fixture NAR the gateway serves, and its file
  BIG_NAR, BIG_NAR_KEY                  a NAR larger than boto3's multipart threshold (8 MiB),
                                        and the key it goes to: nar/<narhash>.nar
  WORK_DIR                              a scratch directory

Every step prints what it does. Every check is an assert: the script exits non-zero on the
first that fails.
"""

import hashlib
import os
import subprocess
import sys

import boto3
import botocore
import requests
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError


def step(text):
    print(f"[boto3] {text}", flush=True)


ENDPOINT = os.environ["NARGATE_ENDPOINT"]
BUCKET = os.environ["BUCKET"]
FIXTURE_BUCKET = os.environ["FIXTURE_BUCKET"]
FIXTURE_NAR_KEY = os.environ["FIXTURE_NAR_KEY"]
BIG_NAR_KEY = os.environ["BIG_NAR_KEY"]
WORK_DIR = os.environ["WORK_DIR"]
with open(os.environ["FIXTURE_NAR"], "rb") as f:
    FIXTURE_NAR = f.read()
with open(os.environ["BIG_NAR"], "rb") as f:
    BIG_NAR = f.read()

step(f"boto3 {boto3.__version__}, botocore {botocore.__version__}, requests {requests.__version__}")

# Path-style, as against any self-hosted S3; the checksum settings are boto3's defaults
# (request_checksum_calculation = when_supported): nothing here turns them off.
s3 = boto3.client(
    "s3",
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
)

# Every request boto3 sends, as (operation, headers), to show what it sent.
sent = []


def record(request, **kwargs):
    operation = kwargs.get("event_name", "").split(".")[-1]
    sent.append((operation, {k.lower(): v for k, v in request.headers.items()}))


s3.meta.events.register("before-send.s3.*", record)


def sent_since(mark, operation):
    return [headers for op, headers in sent[mark:] if op == operation]


def checksum_headers(headers):
    """The checksum a request carried: x-amz-checksum-* headers, or a trailer it announced."""
    names = sorted(k for k in headers if k.startswith("x-amz-checksum-"))
    trailer = headers.get("x-amz-trailer")
    if isinstance(trailer, bytes):
        trailer = trailer.decode()
    return names + ([f"trailer {trailer}"] if trailer else [])


def status_of(error):
    return error.response["ResponseMetadata"]["HTTPStatusCode"]


def md5_hex(data):
    return hashlib.md5(data).hexdigest()


# --- create_bucket, put/get/head/list/delete of plain objects ---------------------------------

step(f"create_bucket {BUCKET}")
out = s3.create_bucket(Bucket=BUCKET)
assert out["ResponseMetadata"]["HTTPStatusCode"] == 200, out

body = b"a build log, uploaded by boto3\n" * 100
mark = len(sent)
step("put_object log/boto3.txt")
out = s3.put_object(Bucket=BUCKET, Key="log/boto3.txt", Body=body, ContentType="text/plain")
assert out["ResponseMetadata"]["HTTPStatusCode"] == 200, out
assert out["ETag"] == f'"{md5_hex(body)}"', out["ETag"]
(put,) = sent_since(mark, "PutObject")
checksums = checksum_headers(put)
step(f"  PutObject carried checksums {checksums}; accepted")
assert checksums, f"boto3 sent no checksum with PutObject: {put}"

step("head_object log/boto3.txt")
head = s3.head_object(Bucket=BUCKET, Key="log/boto3.txt")
assert head["ContentLength"] == len(body), head
assert head["ETag"] == f'"{md5_hex(body)}"', head

step("get_object log/boto3.txt")
got = s3.get_object(Bucket=BUCKET, Key="log/boto3.txt")
assert got["Body"].read() == body
step("get_object log/boto3.txt Range bytes=10-19")
got = s3.get_object(Bucket=BUCKET, Key="log/boto3.txt", Range="bytes=10-19")
assert got["ResponseMetadata"]["HTTPStatusCode"] == 206, got["ResponseMetadata"]
assert got["Body"].read() == body[10:20]

for i in range(3):
    step(f"put_object log/more-{i}.txt")
    s3.put_object(Bucket=BUCKET, Key=f"log/more-{i}.txt", Body=f"more {i}\n".encode())

step("list_objects_v2 Prefix=log/ (paginated, MaxKeys 2)")
keys = []
for page in s3.get_paginator("list_objects_v2").paginate(
    Bucket=BUCKET, Prefix="log/", PaginationConfig={"PageSize": 2}
):
    keys += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
expected = [("log/boto3.txt", len(body))] + [(f"log/more-{i}.txt", 7) for i in range(3)]
assert keys == expected, keys
step("list_objects_v2 Delimiter=/")
listed = s3.list_objects_v2(Bucket=BUCKET, Delimiter="/")
prefixes = [p["Prefix"] for p in listed.get("CommonPrefixes", [])]
assert "log/" in prefixes, listed

step("put_object with a wrong ChecksumCRC32 (must be refused)")
try:
    s3.put_object(Bucket=BUCKET, Key="log/wrong.txt", Body=b"wrong", ChecksumCRC32="AAAAAA==")
    raise AssertionError("a wrong CRC32 was accepted")
except ClientError as e:
    step(f"  refused: {status_of(e)} {e.response['Error']['Code']}")
    assert status_of(e) == 400 and e.response["Error"]["Code"] == "BadDigest", e.response
try:
    s3.head_object(Bucket=BUCKET, Key="log/wrong.txt")
    raise AssertionError("the refused object is there")
except ClientError as e:
    assert status_of(e) == 404, e.response

step("delete_object log/more-0.txt")
out = s3.delete_object(Bucket=BUCKET, Key="log/more-0.txt")
assert out["ResponseMetadata"]["HTTPStatusCode"] == 204, out
try:
    s3.head_object(Bucket=BUCKET, Key="log/more-0.txt")
    raise AssertionError("a deleted object is still there")
except ClientError as e:
    assert status_of(e) == 404, e.response
step("delete_objects log/more-1.txt log/more-2.txt")
out = s3.delete_objects(
    Bucket=BUCKET, Delete={"Objects": [{"Key": "log/more-1.txt"}, {"Key": "log/more-2.txt"}]}
)
assert sorted(d["Key"] for d in out.get("Deleted", [])) == ["log/more-1.txt", "log/more-2.txt"], out
assert not out.get("Errors"), out
listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="log/")
assert [o["Key"] for o in listed.get("Contents", [])] == ["log/boto3.txt"], listed

# --- a NAR big enough for multipart: upload_file, download_file --------------------------------

big_file = os.path.join(WORK_DIR, "big.nar")
with open(big_file, "wb") as f:
    f.write(BIG_NAR)
config = TransferConfig()  # boto3's defaults: multipart at 8 MiB, 8 MiB parts
assert len(BIG_NAR) > config.multipart_threshold, (len(BIG_NAR), config.multipart_threshold)

mark = len(sent)
step(f"upload_file {len(BIG_NAR)} bytes to {BIG_NAR_KEY}")
s3.upload_file(big_file, BUCKET, BIG_NAR_KEY, Config=config)
(create,) = sent_since(mark, "CreateMultipartUpload")
parts = sent_since(mark, "UploadPart")
(complete,) = sent_since(mark, "CompleteMultipartUpload")
step(
    f"  CreateMultipartUpload checksums {checksum_headers(create)}; {len(parts)} UploadParts, "
    f"checksums {[checksum_headers(p) for p in parts]}; CompleteMultipartUpload checksums "
    f"{checksum_headers(complete)}"
)
assert len(parts) >= 2, parts
assert all(checksum_headers(p) for p in parts), "boto3 sent parts without checksums"

step(f"head_object {BIG_NAR_KEY}")
head = s3.head_object(Bucket=BUCKET, Key=BIG_NAR_KEY)
assert head["ContentLength"] == len(BIG_NAR), head
step(f"  ETag {head['ETag']} (the NAR's MD5 is {md5_hex(BIG_NAR)})")

step(f"list_objects_v2 Prefix=nar/")
listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="nar/")
assert [(o["Key"], o["Size"]) for o in listed.get("Contents", [])] == [(BIG_NAR_KEY, len(BIG_NAR))], listed

mark = len(sent)
back = os.path.join(WORK_DIR, "big.back")
step(f"download_file {BIG_NAR_KEY}")
s3.download_file(BUCKET, BIG_NAR_KEY, back, Config=config)
with open(back, "rb") as f:
    assert f.read() == BIG_NAR, "download_file of the multipart-uploaded NAR"
gets = sent_since(mark, "GetObject")
assert len(gets) >= 2 and all("range" in g for g in gets), "download_file reads in ranges"
step(
    f"  {len(gets)} GetObjects, ranges {sorted(g.get('range') for g in gets)}, "
    f"If-Match on {sum('if-match' in g for g in gets)}"
)

# --- the fixture NAR, byte-identical to what Nix dumped -----------------------------------------

step(f"get_object {FIXTURE_BUCKET}/{FIXTURE_NAR_KEY}")
got = s3.get_object(Bucket=FIXTURE_BUCKET, Key=FIXTURE_NAR_KEY)
assert got["Body"].read() == FIXTURE_NAR, "the fixture NAR through get_object"
fixture_back = os.path.join(WORK_DIR, "fixture.nar")
step(f"download_file {FIXTURE_BUCKET}/{FIXTURE_NAR_KEY}")
s3.download_file(FIXTURE_BUCKET, FIXTURE_NAR_KEY, fixture_back)
with open(fixture_back, "rb") as f:
    assert f.read() == FIXTURE_NAR, "the fixture NAR through download_file"

# --- presigned GETs, with requests and with curl ------------------------------------------------


def curl(url, out):
    command = ["curl", "-sS", "-o", out, "-w", "%{http_code}", url]
    step(f"  curl -sS -o {out} -w %{{http_code}} '<presigned url>'")
    try:
        done = subprocess.run(command, capture_output=True, check=False)
    except FileNotFoundError:
        raise AssertionError("curl is missing: install it with .ci/install-tools.sh")
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


for bucket, key, expected in [(BUCKET, BIG_NAR_KEY, BIG_NAR), (FIXTURE_BUCKET, FIXTURE_NAR_KEY, FIXTURE_NAR)]:
    step(f"generate_presigned_url get_object {bucket}/{key}")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=600)
    assert "X-Amz-Signature=" in url, url
    step("  requests.get(<presigned url>)")
    reply = requests.get(url, timeout=60)
    assert reply.status_code == 200, (reply.status_code, reply.text[:500])
    assert reply.content == expected, "a presigned GET with requests"
    out = os.path.join(WORK_DIR, "presigned.out")
    assert curl(url, out) == 200
    with open(out, "rb") as f:
        assert f.read() == expected, "a presigned GET with curl"
    # The signature is checked: one changed character and the gateway refuses.
    signature = url.split("X-Amz-Signature=")[1].split("&")[0]
    forged = url.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    step("  requests.get(<presigned url with a changed signature>)")
    reply = requests.get(forged, timeout=60)
    assert reply.status_code == 403, (reply.status_code, reply.text[:500])

# --- delete the NAR --------------------------------------------------------------------------------

step(f"delete_object {BIG_NAR_KEY}")
out = s3.delete_object(Bucket=BUCKET, Key=BIG_NAR_KEY)
assert out["ResponseMetadata"]["HTTPStatusCode"] == 204, out
try:
    s3.head_object(Bucket=BUCKET, Key=BIG_NAR_KEY)
    raise AssertionError("a deleted NAR is still there")
except ClientError as e:
    assert status_of(e) == 404, e.response

step("all boto3 checks passed")
sys.exit(0)
