"""An OAUTHBEARER token command runs once per refresh for the whole process, not once per
Kafka client: the clients made from one broker section share one provider, and callers
that ask while it runs wait for that run. Real commands (a Python one-liner that counts its
runs in a file)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from pipeline.security import CommandToken, CredentialsError, kafka_security
from pipeline.topology.schema import Broker


def counting(runs: Path, then: str = "print('tok' + str(n))", sleep_s: float = 0.2) -> list[str]:
    """A command that notes each run in ``runs``, takes ``sleep_s``, then runs ``then``."""
    script = (
        f"import pathlib, sys, time; p = pathlib.Path({str(runs)!r}); "
        "n = len(p.read_text()) + 1 if p.exists() else 1; p.write_text('x' * n); "
        f"time.sleep({sleep_s}); {then}"
    )
    return [sys.executable, "-c", script]


def oauth_broker(command: list[str], ttl_s: float = 60) -> Broker:
    return Broker.model_validate(
        {
            "bootstrap_servers": "kafka:9093",
            "security_protocol": "SASL_PLAINTEXT",
            "sasl": {"mechanism": "OAUTHBEARER", "oauth_token_command": command, "oauth_token_ttl_s": ttl_s},
        }
    )


def provider_of(broker: Broker) -> CommandToken:
    provider = kafka_security(broker)["sasl_oauth_token_provider"]
    assert isinstance(provider, CommandToken)
    return provider


async def test_the_clients_of_a_broker_share_one_run_of_the_token_command(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    broker = oauth_broker(counting(runs))
    clients = [provider_of(broker) for _ in range(4)]  # consumer, producers, admin: each its options
    assert all(p is clients[0] for p in clients)
    tokens = await asyncio.gather(*(p.token() for p in clients), clients[0].token())  # all at once
    assert tokens == ["tok1"] * 5
    assert runs.read_text() == "x"  # one run
    assert await clients[1].token() == "tok1" and runs.read_text() == "x"  # cached until its ttl


async def test_a_due_refresh_runs_once_for_concurrent_callers(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    provider = provider_of(oauth_broker(counting(runs, sleep_s=0.1), ttl_s=0.3))
    assert await provider.token() == "tok1"
    await asyncio.sleep(0.35)  # due
    assert await asyncio.gather(*(provider.token() for _ in range(5))) == ["tok2"] * 5
    assert runs.read_text() == "xx"


async def test_a_failing_command_runs_once_for_concurrent_callers_and_keeps_the_last_token(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    failing = counting(runs, then="sys.exit('vault sealed')")
    provider = provider_of(oauth_broker(failing))
    outcomes = await asyncio.gather(*(provider.token() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, CredentialsError) and "vault sealed" in str(o) for o in outcomes), outcomes
    assert runs.read_text() == "x"  # the waiters took the one run's outcome

    kept = tmp_path / "kept"
    provider = provider_of(oauth_broker(counting(kept, then="print('tok') if n == 1 else sys.exit(1)"), 0.01))
    assert await provider.token() == "tok"
    await asyncio.sleep(0.05)  # due, and the refresh fails
    assert await asyncio.gather(*(provider.token() for _ in range(3))) == ["tok"] * 3
    assert kept.read_text() == "xx"


async def test_a_cancelled_caller_leaves_the_run_to_the_next_one(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    provider = provider_of(oauth_broker(counting(runs, sleep_s=1.0)))
    first = asyncio.create_task(provider.token())
    while not runs.exists():
        await asyncio.sleep(0.02)
    waiting = asyncio.create_task(provider.token())
    await asyncio.sleep(0.05)
    first.cancel()  # its run is killed (no orphan): the waiter runs the command itself
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(waiting, 5) == "tok2"


def test_the_shared_provider_works_from_one_event_loop_to_the_next(tmp_path: Path) -> None:
    """The provider outlives a loop (scripts and tests run several): its lock must not."""
    runs = tmp_path / "runs"
    provider = provider_of(oauth_broker(counting(runs, sleep_s=0.05), ttl_s=0.01))

    async def concurrently() -> list[str]:
        await asyncio.sleep(0.02)  # the last token is due
        return await asyncio.gather(*(provider.token() for _ in range(3)))

    assert asyncio.run(concurrently()) == ["tok1"] * 3
    assert asyncio.run(concurrently()) == ["tok2"] * 3
