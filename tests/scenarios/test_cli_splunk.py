"""`shipper test-output` on a splunk_hec output: the real CLI against the fake HEC."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fake_splunk import FakeSplunk

TOKEN = "0b7d6f3e-5a1c-4e2b-9f8a-7c6d5e4f3a21"


def run_test_output(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "shipper", "test-output", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", ""), **env},
        check=False,
    )
    assert TOKEN not in result.stdout + result.stderr, "the token was printed"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def write_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "shipper.yaml"
    config.write_text(
        f"""
state_dir: {tmp_path / "state"}
# Any free port: shipper processes of several tests may overlap.
monitoring:
  port: 0
sources:
  docker: {{type: docker_json, root: {tmp_path / "containers"}}}
outputs:
  splunk:
    type: splunk_hec
    url: {url}
    token: ${{HEC_TOKEN}}
"""
    )
    return config


def test_a_token_hec_accepts_passes_and_nothing_is_indexed(tmp_path: Path) -> None:
    with FakeSplunk() as hec:
        hec.add_token(TOKEN)
        result = run_test_output(write_config(tmp_path, hec.url), {"HEC_TOKEN": TOKEN})
        assert result.returncode == 0, result.stdout + result.stderr
        assert "HEC accepts the token" in result.stdout
        assert hec.events() == []


def test_a_refused_token_fails_and_says_what_to_check(tmp_path: Path) -> None:
    with FakeSplunk() as hec:
        hec.add_token("another-token-entirely")
        result = run_test_output(write_config(tmp_path, hec.url), {"HEC_TOKEN": TOKEN})
        assert result.returncode == 1
        assert "refuses this output's token" in result.stdout
        assert "`token`" in result.stdout


def test_an_unreachable_hec_fails(tmp_path: Path) -> None:
    with FakeSplunk() as hec:
        url = hec.url  # closed when the block ends: nothing listens there any more
    result = run_test_output(write_config(tmp_path, url), {"HEC_TOKEN": TOKEN})
    assert result.returncode == 1
    assert "cannot reach Splunk HEC" in result.stdout
