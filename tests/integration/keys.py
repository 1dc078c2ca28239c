"""Redis key names of the gateway, for tests that read or write Redis
directly: the one place tests build them (mirrors src/store/store.c and
semgate/store/layout.h; tests/integration/test_layout.py checks it against
the gateway). Every key carries the hash tag of one of BUCKETS slot buckets:
{prefix}{kind}:{<bucket tag>}:{tenant}[:{rest}]."""
import re

PREFIX = "sg:"
BUCKETS = 64
SLOTS = 16384


def crc16(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key) -> int:
    k = key.encode() if isinstance(key, str) else key
    o = k.find(b"{")
    if o >= 0:
        c = k.find(b"}", o + 1)
        if c > o + 1:
            k = k[o + 1:c]
    return crc16(k) % SLOTS


def _tags():
    per = SLOTS // BUCKETS
    best = [None] * BUCKETS
    for n in range(65536):
        slot = crc16(str(n).encode()) % SLOTS
        b = slot // per
        d = abs(slot - (b * per + per // 2))
        if best[b] is None or d < best[b][0]:
            best[b] = (d, n)
    return [str(n) for _, n in best]


TAGS = _tags()
TAG_RE = r"\{[0-9]{1,5}\}"


def bucket_of(tenant: str, object_id: str) -> int:
    h = 2166136261
    for ch in tenant.encode() + b"\0" + object_id.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h % BUCKETS


def key_in(kind, bucket, tenant, rest=None, prefix=PREFIX):
    k = f"{prefix}{kind}:{{{TAGS[bucket]}}}:{tenant}"
    return k if rest is None else f"{k}:{rest}"


def key(kind, tenant, rest, prefix=PREFIX):
    """A key in the bucket of (tenant, rest): conversations, entries, exact keys."""
    return key_in(kind, bucket_of(tenant, rest), tenant, rest, prefix)


def chat(tenant, conv, prefix=PREFIX):
    return key("chat", tenant, conv, prefix)


def entry(tenant, eid, prefix=PREFIX):
    return key("e", tenant, eid, prefix)


def exact(tenant, sha, prefix=PREFIX):
    return key("x", tenant, sha, prefix)


def emb(tenant, model, sha, prefix=PREFIX):
    return key("emb", tenant, f"{model}:{sha}", prefix)


def cal(tenant, rest="all", prefix=PREFIX):
    return key("cal", tenant, rest, prefix)


def rate(tenant, prefix=PREFIX):
    return key_in("rl", bucket_of(tenant, "rl"), tenant, None, prefix)


def tag(tenant, name, eid, prefix=PREFIX):
    """The tag set that holds entry eid (the tag set of its bucket)."""
    return key_in("tag", bucket_of(tenant, eid), tenant, name, prefix)


def tag_keys(tenant, name, prefix=PREFIX):
    return [key_in("tag", b, tenant, name, prefix) for b in range(BUCKETS)]


def top(tenant, eid, prefix=PREFIX):
    """The leaderboard part that ranks entry eid."""
    return key_in("top", bucket_of(tenant, eid), tenant, None, prefix)


def tenant_keys(kind, tenant, prefix=PREFIX):
    """Every bucket's part of a tenant-wide structure (top, stats, live, size)."""
    return [key_in(kind, b, tenant, None, prefix) for b in range(BUCKETS)]


def series_bucket(tenant, minute):
    return bucket_of(tenant, f"h:{minute // 60}")


def series(tenant, hourly, n, prefix=PREFIX):
    """The minute (hourly: hour) series hash n of a tenant."""
    minute = n * 60 if hourly else n
    return key_in("ts", series_bucket(tenant, minute), tenant,
                  f"{'h' if hourly else 'm'}:{n}", prefix)


def stats_key(tenant, minute, prefix=PREFIX):
    """The stats part written with the counters of that minute."""
    return key_in("stats", series_bucket(tenant, minute), tenant, None, prefix)


def pattern(kind, tenant=None, prefix=PREFIX):
    """SCAN MATCH pattern of every key of kind (of one tenant)."""
    return f"{prefix}{kind}:{{*}}:*" if tenant is None else f"{prefix}{kind}:{{*}}:{tenant}:*"


def regex(kind, tenant, rest_re, prefix=PREFIX):
    r = rf"^{re.escape(prefix)}{kind}:{TAG_RE}:{re.escape(tenant)}"
    return r + (rf":{rest_re}$" if rest_re is not None else "$")


def is_kind(k, kind, prefix=PREFIX):
    s = k.decode() if isinstance(k, bytes) else k
    return s.startswith(f"{prefix}{kind}:{{")


def entry_id(k):
    """The entry id of an entry key."""
    s = k.decode() if isinstance(k, bytes) else k
    return s.split(":", 4)[4] if s.count(":") >= 4 else s.rsplit(":", 1)[1]


def hsum(r, keys):
    """Field-wise sum (as ints) of the hashes keys, as bytes -> int."""
    out = {}
    for k in keys:
        for f, v in r.hgetall(k).items():
            try:
                out[f] = out.get(f, 0) + int(v)
            except ValueError:
                out[f] = v
    return out


def stats(r, tenant, prefix=PREFIX):
    """The tenant's stats counters, summed over its buckets."""
    return hsum(r, tenant_keys("stats", tenant, prefix))


def zscore(r, tenant, eid, prefix=PREFIX):
    return r.zscore(top(tenant, eid, prefix), eid)


def zcard(r, kind, tenant, prefix=PREFIX):
    return sum(r.zcard(k) for k in tenant_keys(kind, tenant, prefix))


def smembers(r, tenant, name, prefix=PREFIX):
    out = set()
    for k in tag_keys(tenant, name, prefix):
        out |= r.smembers(k)
    return out


def legacy(kind, tenant, rest, prefix=PREFIX):
    """A key as the layout before slot buckets named it (no hash tag)."""
    return f"{prefix}{kind}:{tenant}:{rest}"


def fit_id(tenant, sha, eid):
    """store_entry_id_fit: eid with its last four hex digits moved until it
    is in the bucket of (tenant, sha), the bucket of the entry's exact key."""
    want = bucket_of(tenant, sha)
    for _ in range(65536):
        if bucket_of(tenant, eid) == want:
            return eid
        eid = eid[:-4] + "%04x" % ((int(eid[-4:], 16) + 1) & 0xFFFF)
    raise AssertionError("no fitting id")


def untagged(k, prefix=PREFIX):
    """The name the layout before slot buckets gave key k, or None when k
    carries no bucket tag."""
    s = k.decode() if isinstance(k, bytes) else k
    m = re.match(rf"^{re.escape(prefix)}([a-z]+):{TAG_RE}:(.*)$", s)
    return f"{prefix}{m.group(1)}:{m.group(2)}" if m else None
