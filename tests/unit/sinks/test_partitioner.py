"""The sink's batch partitioner picks what aiokafka's (and the Java client's) would."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner, murmur2

from pipeline.sinks.partitioner import murmur2 as batch_murmur2
from pipeline.sinks.partitioner import partitions_for


def test_murmur2_matches_the_clients_for_every_length_and_byte() -> None:
    rng = random.Random(7)
    for length in range(0, 24):
        keys = [rng.randbytes(length) for _ in range(50)] + [b"\xff" * length, b"\x00" * length]
        assert batch_murmur2(keys).tolist() == [murmur2(key) for key in keys]


def test_the_java_clients_own_test_values() -> None:
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed 32-bit there)
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, signed in cases.items():
        assert batch_murmur2([key]).tolist() == [signed & 0xFFFFFFFF]


def test_partitions_follow_the_default_partitioner_in_a_mixed_batch() -> None:
    rng = random.Random(11)
    keys = [str(rng.randrange(10 ** rng.randrange(1, 9))).encode() for _ in range(500)]
    keys += [rng.randbytes(rng.randrange(60, 300)) for _ in range(40)]  # long: a key at a time
    rng.shuffle(keys)
    every = [0, 1, 2, 3, 4, 5, 6]
    assert partitions_for(keys, every, every) == [DefaultPartitioner()(k, every, every) for k in keys]


def test_keyless_records_go_to_an_available_partition() -> None:
    chosen = partitions_for([None] * 200 + [b"k"], [0, 1, 2, 3], [1, 3])
    assert set(chosen[:200]) == {1, 3}
    assert chosen[200] == DefaultPartitioner()(b"k", [0, 1, 2, 3], [1, 3])
    assert set(partitions_for([None] * 50, [0, 1], [])) == {0, 1}
