"""Compatibility with a real client: the official `openai` npm package drives
the gateway (tests/node/compat.mjs), non-streaming and streaming, miss then
hit, and the text must be identical."""
import json
import os
import shutil
import subprocess

from conftest import ROOT

NODE_DIR = os.path.join(ROOT, "tests", "node")


def ensure_node_modules():
    assert shutil.which("node") and shutil.which("npm"), "node and npm are needed for this test"
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "openai")):
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr


def test_official_openai_client_sees_identical_text_on_miss_and_hit(gateway, upstream):
    ensure_node_modules()
    env = dict(os.environ, SEMGATE_URL=gateway.url, COMPAT_TAG="t1")
    r = subprocess.run(["node", "compat.mjs"], cwd=NODE_DIR, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["plainHit"]["text"] == "Mock answer: compat plain t1"
    assert seen["streamHit"]["text"] == "Mock answer: compat stream t1"
    # the upstream answered exactly the two misses
    assert upstream.stats()["chat_requests"] == 2
