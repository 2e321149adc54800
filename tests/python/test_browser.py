"""The browser test: MQTT.js in headless Chromium over ws://, run through Node's test runner.

tests/browser/mqtt-in-chromium.test.mjs starts its own coremq (the same binary as these
tests) and Chromium. This wrapper runs it so that a pytest run includes it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

BROWSER_DIR = REPO_ROOT / "tests" / "browser"

# Chromium's start, two page loads and four MQTT round trips take a few seconds; this bounds
# only a hang.
NODE_TEST_TIMEOUT_SECONDS = 180


def test_mqtt_js_in_chromium(coremq_binary: Path):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found on PATH: install the Debian package nodejs", pytrace=False)
    chromium = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    if not Path(chromium).exists():
        pytest.fail(
            f"Chromium not found at {chromium}: install the Debian package chromium",
            pytrace=False,
        )
    for package in ("mqtt", "playwright-core"):
        if not (BROWSER_DIR / "node_modules" / package).is_dir():
            pytest.fail(
                f"npm package {package} is missing: run `npm ci` in {BROWSER_DIR}",
                pytrace=False,
            )

    env = dict(os.environ, COREMQ_BIN=str(coremq_binary), CHROMIUM_PATH=chromium)
    result = subprocess.run(
        [node, "--test", "--test-reporter=spec", "mqtt-in-chromium.test.mjs"],
        cwd=BROWSER_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=NODE_TEST_TIMEOUT_SECONDS,
    )

    assert result.returncode == 0, (
        f"node --test exited with code {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    assert "protocol version 5" in result.stdout
    assert "protocol version 4" in result.stdout
