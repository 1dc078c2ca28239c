"""Compatibility with a real client: the official `openai` npm package drives
the gateway (tests/node/compat.mjs), non-streaming and streaming, miss then
hit, and the text must be identical."""
import json
import os
import subprocess


def test_official_openai_client_sees_identical_text_on_miss_and_hit(gateway, upstream,
                                                                      openai_node):
    env = dict(os.environ, SEMGATE_URL=gateway.url, COMPAT_TAG="t1")
    r = subprocess.run(["node", "compat.mjs"], cwd=openai_node, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["plainHit"]["text"] == "Mock answer: compat plain t1"
    assert seen["streamHit"]["text"] == "Mock answer: compat stream t1"
    # the upstream answered exactly the two misses
    assert upstream.stats()["chat_requests"] == 2
