"""Record batches compressed with any codec Kafka has are read: what other services'
producers (Java, Go, librdkafka) post to the request topic, or what a broker's or topic's
compression.type makes of the relay's own messages."""

from __future__ import annotations

import pytest
from aiokafka.codec import has_gzip, has_lz4, has_snappy, has_zstd
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def test_the_install_has_every_codec() -> None:
    assert (has_gzip(), has_snappy(), has_lz4(), has_zstd()) == (True, True, True, True)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_a_compressed_batch_reads_back(codec: str) -> None:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=CODECS[codec], is_transactional=False, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    values = [b'{"correlation_id": "%d"}' % i for i in range(20)]
    for i, value in enumerate(values):
        builder.append(i, timestamp=None, key=b"k", value=value, headers=[])
    batch = MemoryRecords(bytes(builder.build())).next_batch()
    assert batch.compression_type == CODECS[codec]
    assert [r.value for r in batch] == values
