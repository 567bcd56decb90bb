"""An OAUTHBEARER token command (oauth_token_command): run once and cached, its failure
named, killed when its caller is cancelled. Real commands (Python one-liners)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from pipeline.security import CommandToken, CredentialsError


async def test_a_token_command_is_cached_and_its_failure_is_clear(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    script = (
        f"import pathlib; p = pathlib.Path({str(counter)!r}); "
        "p.write_text(p.read_text() + 'x' if p.exists() else 'x'); print('tok')"
    )
    provider = CommandToken([sys.executable, "-c", script], ttl_s=60)

    assert (await provider.token(), await provider.token()) == ("tok", "tok")
    assert counter.read_text() == "x"  # run once
    failing = CommandToken([sys.executable, "-c", "import sys; sys.exit('no vault')"], ttl_s=60)
    with pytest.raises(CredentialsError, match="oauth_token_command exited 1: no vault"):
        await failing.token()


async def test_a_cancelled_token_command_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = (
        f"import os, time, pathlib; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); "
        "time.sleep(60)"
    )
    task = asyncio.create_task(CommandToken([sys.executable, "-c", script], ttl_s=60).token())
    while not pid_file.exists():
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
