"""The three body shapes every benchmark posts or stores: MinIO, RustFS and Ceph RGW, one
record per request, as each store sends them (built after tests/fixtures/{minio,rustfs,ceph}).

Each shape is a template in which `@N@` stands for an id unique to the event (it goes into the
object key and the request id, so every event has its own dedup key and its own dispatch
lane) and `@T@` for the event time, the time of sending in the store's own precision (stores
stamp each event when it happens, so times rise from one event to the next). The same templates feed wrk's Lua script (`lua_script`), the Python load generators
(`body`) and the log filler (bench/fill.py), so every part of the suite measures the same
events.
"""

from __future__ import annotations

import re
import time

ID = "@N@"
TIME = "@T@"

# (ingest path, template); the path is the relay's source label.
SHAPES: tuple[tuple[str, str], ...] = (
    (
        "/minio",
        '{"EventName":"s3:ObjectCreated:Put","Key":"bench/photos/2026/03/obj-@N@.jpg",'
        '"Records":[{"eventVersion":"2.0","eventSource":"minio:s3","awsRegion":"",'
        '"eventTime":"@T@","eventName":"s3:ObjectCreated:Put",'
        '"userIdentity":{"principalId":"minioadmin"},"requestParameters":{"principalId":"minioadmin",'
        '"region":"","sourceIPAddress":"10.0.0.7"},"responseElements":{"x-amz-id-2":"dd9025bab4ad464b0491",'
        '"x-amz-request-id":"M@N@","x-minio-deployment-id":"6b3c0f5e-1111-2222-3333-444455556666",'
        '"x-minio-origin-endpoint":"http://10.0.0.2:9000"},"s3":{"s3SchemaVersion":"1.0",'
        '"configurationId":"Config","bucket":{"name":"bench","ownerIdentity":{"principalId":"minioadmin"},'
        '"arn":"arn:aws:s3:::bench"},"object":{"key":"photos%2F2026%2F03%2Fobj-@N@.jpg","size":52311,'
        '"eTag":"9b2cf535f27731c974343645a3985328","contentType":"image/jpeg",'
        '"userMetadata":{"content-type":"image/jpeg","X-Amz-Meta-Camera":"fuji-x100"},'
        '"sequencer":"1829C3F0A5B1E2D4"}},'
        '"source":{"host":"10.0.0.7","port":"","userAgent":"MinIO (linux; amd64) minio-go/v7.0.70"}}]}',
    ),
    (
        "/rustfs",
        '{"EventName":"s3:ObjectCreated:Put","Key":"ledger/reports/2025 Q2 (final)+v@N@.pdf",'
        '"Records":[{"eventVersion":"2.1","eventSource":"rustfs:s3","awsRegion":"",'
        '"eventTime":"@T@","eventName":"s3:ObjectCreated:Put",'
        '"userIdentity":{"principalId":"ledger-writer"},"requestParameters":{"accept-encoding":"identity",'
        '"authorization":"***redacted***","content-length":"20480","content-type":"application/pdf",'
        '"host":"s3.internal:9000","principalId":"ledger-writer","user-agent":"aws-sdk-go-v2/1.30.3 os/linux",'
        '"x-amz-content-sha256":"***redacted***","x-amz-date":"20250714T164509Z","x-amz-meta-dept":"Accounts",'
        '"x-forwarded-for":"203.0.113.50, 10.1.2.3","x-real-ip":"10.1.2.3"},"responseElements":'
        '{"content-length":"0","etag":"\\"c4ca4238a0b923820dcc509a6f75849b\\"","x-amz-id-2":"",'
        '"x-amz-request-id":"R@N@"},"s3":{"s3SchemaVersion":"1.0","configurationId":"Config",'
        '"bucket":{"name":"ledger","ownerIdentity":{"principalId":"ledger-writer"},"arn":"arn:aws:s3:::ledger"},'
        '"object":{"key":"reports%2F2025+Q2+%28final%29%2Bv@N@.pdf","size":20480,'
        '"eTag":"c4ca4238a0b923820dcc509a6f75849b","contentType":"application/pdf",'
        '"userMetadata":{"x-amz-meta-dept":"Accounts"},"sequencer":"1852A7C3E10B4F00"}},'
        '"source":{"host":"s3.internal:9000","port":"9000","userAgent":"aws-sdk-go-v2/1.30.3 os/linux"}}]}',
    ),
    (
        "/ceph",
        '{"Records":[{"eventVersion":"2.2","eventSource":"ceph:s3","awsRegion":"",'
        '"eventTime":"@T@","eventName":"ObjectCreated:Put",'
        '"userIdentity":{"principalId":"relay"},"requestParameters":{"sourceIPAddress":""},'
        '"responseElements":{"x-amz-request-id":"8638bf14-29d4-41ea-83ef-07d8499ac64f.4118.@N@",'
        '"x-amz-id-2":"1016-default-default"},"s3":{"s3SchemaVersion":"1.0","configurationId":"relay-notif",'
        '"bucket":{"name":"src","ownerIdentity":{"principalId":"relay"},"arn":"arn:aws:s3:::src",'
        '"id":"8638bf14-29d4-41ea-83ef-07d8499ac64f.4120.1"},"object":{"key":"photos/cat-@N@.jpg",'
        '"size":40,"eTag":"7a202d1233ddda000efda8f196043be9","versionId":"",'
        '"sequencer":"0D1B016B7FE68510","metadata":[{"key":"x-amz-meta-owner","val":"alice"}],'
        '"tags":[]}},"eventId":"1795234573.277210.@N@","opaqueData":"relay-test-opaque"}]}',
    ),
)


# digits of the fraction of a second in each shape's eventTime: MinIO and RustFS write
# milliseconds, Ceph microseconds
PRECISION = {"/minio": 3, "/rustfs": 3, "/ceph": 6}


def event_time(precision: int, now: float | None = None) -> str:
    now = time.time() if now is None else now
    fraction = f"{now % 1:.{precision}f}"[1:]
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + fraction + "Z"


def body(n: int, tag: str = "b", now: float | None = None) -> tuple[str, bytes]:
    """The n-th event of the rotation: (ingest path, body); `tag` keeps runs apart."""
    path, template = SHAPES[n % len(SHAPES)]
    stamped = template.replace(TIME, event_time(PRECISION[path], now))
    return path, stamped.replace(ID, f"{tag}-{n}").encode()


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def lua_script(token: str) -> str:
    """wrk script: one body per request, the three shapes in rotation, each id unique (a
    random prefix per wrk run, so warm-up and measured runs never collide); `done()` prints
    the percentiles wrk's --latency table lacks (p99.9), in microseconds, on one line."""

    def shape(path: str, template: str) -> str:
        pieces = re.split(f"({ID}|{TIME})", template)  # text, placeholder, text, …
        parts = ", ".join(_lua_string(p) for p in pieces[::2])
        times = ", ".join("true" if p == TIME else "false" for p in pieces[1::2])
        return f'{{path = "{path}", digits = {PRECISION[path]}, parts = {{{parts}}}, ' \
               f"times = {{{times}}}}}"  # fmt: skip

    shapes = ",\n  ".join(shape(path, t) for path, t in SHAPES)
    return f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
local shapes = {{
  {shapes}
}}
local n = 0
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
local prefix = tostring(math.random(1, 1000000000))
request = function()
  n = n + 1
  local shape = shapes[(n % #shapes) + 1]
  -- Lua's clock has whole seconds: the fraction counts requests, so times still rise
  local fraction = string.format("%0" .. shape.digits .. "d", n % (10 ^ shape.digits))
  local stamp = os.date("!%Y-%m-%dT%H:%M:%S.") .. fraction .. "Z"
  local id = prefix .. "-" .. n
  local out = {{shape.parts[1]}}
  for i = 2, #shape.parts do
    out[#out + 1] = shape.times[i - 1] and stamp or id
    out[#out + 1] = shape.parts[i]
  end
  local body = table.concat(out)
  return wrk.format(nil, shape.path, nil, body)
end
done = function(summary, latency, requests)
  io.write(string.format(
    "BENCH requests=%d duration_us=%d status_errors=%d connect_errors=%d read_errors=%d "
    .. "timeouts=%d p50=%d p90=%d p99=%d p999=%d max=%d\\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.timeout, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""
