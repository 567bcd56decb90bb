"""Users who react to their latest recommendation (`pipeline dev --reacting`): a model that
recommends in the user's taste is followed far more often than a random one, so online hit@K
depends on the model; without recommendations the events are exactly the generator's."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable

import numpy as np
import orjson
import pytest

from pipeline.cli import main
from pipeline.devstack.dev import live_events
from pipeline.devstack.reactions import ReactingBooks, Reactions
from pipeline.recsys.generator import EventGenerator, GeneratorConfig

CONFIG = GeneratorConfig(users=300, items=2000, clusters=10, seed=3)
K = 10
Model = Callable[[EventGenerator, int, np.random.Generator], list[int]]


def record(user: int, items: list[int], version: str = "1") -> bytes:
    return orjson.dumps(
        {
            "user_id": user,
            "items": [{"item_id": i, "score": 1.0 / (r + 1)} for r, i in enumerate(items)],
            "model": {"name": "recommender", "version": version},
        }
    )


def in_cluster(gen: EventGenerator, user: int, rng: np.random.Generator) -> list[int]:
    """A model that knows the user's taste: the most popular items of the user's cluster."""
    return gen.cluster_items[gen.user_cluster[user]][:K].tolist()


def at_random(gen: EventGenerator, user: int, rng: np.random.Generator) -> list[int]:
    return rng.choice(gen.config.items, size=K, replace=False).tolist()


def online_hit_rate(model: Model | None, recommend: Model, events: int = 6000) -> tuple[float, Reactions]:
    """Each event is answered by ``recommend`` (as the pipeline would); the share of events
    whose item was in the user's latest recommendation. ``model`` None: users do not react."""
    gen = EventGenerator(CONFIG)
    reactions = Reactions.of(gen, 0.6, seed=1)
    latest: dict[int, list[int]] = {}
    hits = shown = 0
    rng = np.random.default_rng(2)
    for event in gen.events(events):
        user = int(event["user_id"])  # type: ignore[call-overload]
        if model is not None:
            event = reactions.next_event(event)
        if user in latest:
            shown += 1
            hits += int(event["item_id"]) in latest[user]  # type: ignore[call-overload]
        latest[user] = recommend(gen, user, rng)
        reactions.observe(record(user, latest[user]))
    return hits / shown, reactions


def test_reacting_users_follow_a_model_that_knows_their_taste() -> None:
    fitting, reactions = online_hit_rate(in_cluster, in_cluster)
    random, _ = online_hit_rate(at_random, at_random)
    unmoved, _ = online_hit_rate(None, in_cluster)  # the generator alone, same model
    assert fitting > 0.55 and fitting > 5 * random, (fitting, random)
    assert random < 0.15
    assert fitting > unmoved + 0.25, (fitting, unmoved)  # the reactions make the difference
    stats = reactions.stats()
    assert stats["reacted"] / stats["with_recommendation"] == pytest.approx(0.6, abs=0.03)  # type: ignore[operator]
    assert stats["by_model"] == {
        "recommender:1": {"with_recommendation": stats["with_recommendation"], "reacted": stats["reacted"]}
    }


def test_without_recommendations_the_events_are_the_generators() -> None:
    expected = list(EventGenerator(CONFIG).events(5000))
    reactions = Reactions.of(EventGenerator(CONFIG), 1.0, seed=1)
    reactions.observe(record(10**9, [1, 2, 3]))  # a user the generator never yields
    assert list(reactions.react(EventGenerator(CONFIG).events(5000))) == expected
    assert reactions.stats()["reacted"] == 0


def test_exposing_the_item_clusters_did_not_change_the_events() -> None:
    gen = EventGenerator(CONFIG)
    for c, members in enumerate(gen.cluster_items):
        assert (gen.item_cluster[members] == c).all()
    # pinned: the stream of this seed as the generator yielded it before item_cluster existed
    digest = hashlib.sha256(orjson.dumps(list(gen.events(5000)))).hexdigest()
    assert digest == "d67ee99b3a249f2ceaeef37bdc6334dafba0b89d201e7dc4c1b7c32fcc73254b"


def test_same_seed_same_recommendations_same_events() -> None:
    def run() -> list[dict[str, object]]:
        gen = EventGenerator(CONFIG)
        reactions = Reactions.of(gen, 0.6, seed=7)
        out = []
        for event in gen.events(3000):
            out.append(reactions.next_event(event))
            user = int(event["user_id"])  # type: ignore[call-overload]
            reactions.observe(record(user, in_cluster(gen, user, np.random.default_rng(0))))
        return out

    first, second = run(), run()
    assert first == second
    assert first != list(EventGenerator(CONFIG).events(3000))  # and it did react


def test_picks_favour_top_ranks_and_the_users_taste() -> None:
    gen = EventGenerator(CONFIG)
    user = 5
    mine = gen.cluster_items[gen.user_cluster[user]]
    other = gen.cluster_items[(gen.user_cluster[user] + 1) % CONFIG.clusters]
    items = [int(x) for pair in zip(mine[:5], other[:5], strict=True) for x in pair]  # alternating
    reactions = Reactions.of(gen, 1.0, seed=4)
    reactions.observe(record(user, items))
    picked = Counter(reactions.next_event({"user_id": user, "item_id": -5})["item_id"] for _ in range(4000))
    assert picked.pop(-5) == pytest.approx(2000, abs=150)  # fit 0.5: about half react
    assert set(picked) <= set(items)
    ranks = [picked[i] for i in items]
    assert ranks[0] > 3 * ranks[8]  # the top of the list is picked more than its bottom
    inside, outside = sum(ranks[0::2]), sum(ranks[1::2])
    assert inside > 3 * outside, (inside, outside)


def test_latest_recommendation_per_user_bounded() -> None:
    gen = EventGenerator(CONFIG)
    reactions = Reactions.of(gen, 1.0, max_users=2, seed=1)
    own = in_cluster(gen, 1, np.random.default_rng(0))  # in user 1's taste
    for user in (0, 1, 2):  # user 0 is the least recent: forgotten
        reactions.observe(record(user, in_cluster(gen, user, np.random.default_rng(0))))
    assert len(reactions) == 2
    event = {"user_id": 0, "item_id": -5}
    assert reactions.next_event(dict(event)) == event
    reactions.observe(record(1, own, version="2"))  # replaces user 1's
    reactions.observe(record(3, own))  # forgets user 2, not the refreshed user 1
    assert reactions.next_event({"user_id": 2, "item_id": -5})["item_id"] == -5
    reacted = [reactions.next_event({"user_id": 1, "item_id": -5})["item_id"] for _ in range(50)]
    assert any(item in own for item in reacted)
    assert "recommender:2" in reactions.stats()["by_model"]  # type: ignore[operator]


def test_records_that_are_not_recommendations_are_counted_and_ignored() -> None:
    reactions = Reactions.of(EventGenerator(CONFIG), 1.0, seed=1)
    for bad in (b"not json", b"{}", b'{"user_id": "x", "items": []}', b'{"user_id": 1, "items": [3]}'):
        reactions.observe(bad)
    reactions.observe(record(1, [-1, -1]))  # padding only: nothing to react to
    assert len(reactions) == 0 and reactions.stats()["unreadable_recommendations"] == 4


def test_the_ledgers_of_reacting_books_feed_the_reactions() -> None:
    gen = EventGenerator(CONFIG)
    reactions = Reactions.of(gen, 1.0, seed=1)
    books = ReactingBooks(reactions=reactions)
    ledger = books.new_epoch()
    doc = orjson.loads(record(4, in_cluster(gen, 4, np.random.default_rng(0))))
    doc["sources"] = [{"topic": "interactions", "partition": 0, "offset": 0}]
    ledger.add_recommendation(orjson.dumps(doc), 1)
    assert ledger.recommendations == 1 and len(reactions) == 1  # counted and remembered
    assert books.new_epoch() is not ledger and len(books.ledgers) == 2


def test_live_events_react_only_when_asked() -> None:
    config = GeneratorConfig(users=5, items=200, clusters=2, seed=9)
    plain = [(e["user_id"], e["item_id"]) for e in live_events(config, 300)]
    assert plain == [(e["user_id"], e["item_id"]) for e in EventGenerator(config).events(300)]
    gen = EventGenerator(config)
    reactions = Reactions.of(gen, 1.0, seed=1)
    for user in range(5):
        reactions.observe(record(user, in_cluster(gen, user, np.random.default_rng(0))))
    reacting = [(e["user_id"], e["item_id"]) for e in live_events(config, 300, reactions)]
    assert [u for u, _ in reacting] == [u for u, _ in plain]  # the same users, in turn
    assert reacting != plain and reactions.stats()["reacted"] > 100  # type: ignore[operator]
    after = [(e["user_id"], e["item_id"]) for e in live_events(config, 100, skip=200)]
    assert after == plain[200:]  # the events after the first 200 (a model's training data)


@pytest.mark.parametrize("value", ["0", "1.5", "nan", "lots"])
def test_react_share_out_of_range_is_an_argument_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["dev", "--reacting", "--react-share", value])
    assert done.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("pipeline dev: error: argument --react-share") and value in last, last


def test_react_share_without_reacting_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dev", "--react-share", "0.5"]) == 2  # before anything starts
    assert capsys.readouterr().err == "pipeline dev: --react-share goes with --reacting or --experiment\n"
