"""The per-partition history store: the same histories as the in-memory one, kept on disk
across a close and reopen, memory bounded by its cache whatever the number of users."""

from __future__ import annotations

import random
from pathlib import Path

from pipeline.operators.coalesce import RecentItems, pack_pairs, unpack_pairs
from pipeline.state.histories import HistoryStore, user_key, waiting_key


def store(path: Path, cache_bytes: int = 1 << 20) -> HistoryStore:
    return HistoryStore(path, history_length=4, by_event_time=True, cache_bytes=cache_bytes)


def test_histories_match_the_in_memory_ones_for_random_events(tmp_path: Path) -> None:
    rng = random.Random(5)
    on_disk, in_memory = store(tmp_path / "s", cache_bytes=2_000), RecentItems(4, 10_000, True, 1 << 30)
    for step in range(3_000):
        user = rng.randrange(200)
        events = [(rng.randrange(10_000), rng.randrange(50)) for _ in range(rng.randrange(1, 4))]
        assert on_disk.extend(user, list(events)) == in_memory.extend(user, list(events)), step
        if step % 100 == 0:
            on_disk.flush()
    assert on_disk.misses > 0 and on_disk.cache_bytes <= 2_000  # most users were read back from disk
    on_disk.close()


def test_a_replayed_event_changes_nothing(tmp_path: Path) -> None:
    s = store(tmp_path / "s")
    s.extend(7, [(100, 1), (200, 2)])
    assert s.extend(7, [(100, 1)]) == (1, 2)  # at-least-once: the same event again
    s.close()


def test_histories_and_the_changelog_offset_survive_a_close(tmp_path: Path) -> None:
    s = store(tmp_path / "s")
    s.extend(1, [(10, 5), (20, 6)])
    s.extend(2, [(30, 7)])
    s.flush(changelog_offset=41)
    s.extend(1, [(40, 8)])  # flushed by close
    s.close()
    again = store(tmp_path / "s")
    assert again.history(1) == (5, 6, 8) and again.history(2) == (7,) and again.history(3) == ()
    assert again.changelog_offset() == 41
    again.close()


def test_a_restored_history_replaces_what_was_stored(tmp_path: Path) -> None:
    s = store(tmp_path / "s")
    s.extend(1, [(10, 5)])
    s.put_packed(1, pack_pairs([(50, 9), (60, 3)]))
    assert s.history(1) == (9, 3)
    assert s.extend(1, [(70, 4)]) == (9, 3, 4)
    s.close()


def test_memory_is_bounded_by_the_cache_while_disk_holds_every_user(tmp_path: Path) -> None:
    s = store(tmp_path / "s", cache_bytes=50_000)
    for user in range(20_000):
        s.extend(user, [(user, user % 97), (user + 1, 100 + user % 89)])
        if user % 1_000 == 999:
            s.flush()
    assert s.cache_bytes <= 50_000
    assert s.history(0) == (0, 100) and s.history(19_999) == (19_999 % 97, 100 + 19_999 % 89)
    s.close()
    reopened = store(tmp_path / "s")
    assert reopened.history(12_345) == (12_345 % 97, 100 + 12_345 % 89)
    reopened.close()


def test_a_waiting_recommendation_rides_beside_the_history_to_the_changelog_and_back(tmp_path: Path) -> None:
    s = store(tmp_path / "s")
    s.extend(1, [(10, 5)])
    s.set_waiting(1, b"rec-1")
    assert s.extend(1, [(20, 6), (30, 7)]) == (5, 6, 7)
    assert s.waiting(1) == b"rec-1" and s.has_history(1) and not s.has_history(2)
    sent = s.take_changed()  # what the changelog gets: the history and, under its own key, the rest
    assert sent == {user_key(1): pack_pairs([(10, 5), (20, 6), (30, 7)]), waiting_key(1): b"rec-1"}
    s.stored(changelog_offset=3)
    assert s.waiting(1) == b"rec-1"  # on disk now
    s.close()

    restored = store(tmp_path / "r")  # another member's disk, restored from the changelog
    restored.apply_changelog([*sent.items(), (b"\x07" + user_key(1), b"a later release's")], last_offset=3)
    assert restored.waiting(1) == b"rec-1" and restored.history(1) == (5, 6, 7)
    assert [key for key, _ in restored.items()] == [user_key(1)]  # histories only
    restored.close()


def test_an_earlier_release_reads_every_history_record_and_skips_the_rest(tmp_path: Path) -> None:
    """What a member of an earlier release does with this release's changelog: it keeps the
    records keyed by a user (8 bytes) as packed pairs and skips every other key."""
    s = store(tmp_path / "s")
    for user in range(20):
        s.extend(user, [(10 + user, user), (20 + user, 100 + user)])
        s.set_waiting(user, b"x" * (user + 1))  # any length: never read as pairs
    records = s.take_changed()
    histories = {key: value for key, value in records.items() if len(key) == 8}
    assert len(histories) == 20 and len(records) == 40
    for value in histories.values():  # the earlier release's reading
        assert len(value) % 16 == 0 and len(unpack_pairs(value)) == 2
    s.close()


def test_a_user_found_nowhere_is_read_from_disk_once_until_written(tmp_path: Path) -> None:
    """The outcome join and the history both look a new user up: one disk read. A restore
    of that user is seen at once."""
    s = store(tmp_path / "s", cache_bytes=0)
    assert s.waiting(5) is None and s.history(5) == () and s.misses == 1
    s.extend(5, [(10, 1)])
    assert s.history(5) == (1,)
    assert s.history(6) == () and s.misses == 2
    s.apply_changelog([(user_key(6), pack_pairs([(20, 2)]))], last_offset=0)
    assert s.history(6) == (2,)
    s.close()
