"""How a Qdrant server (a cluster, usually) should lay out the collections this project creates, and how its reads
should agree between replicas.

A server or cluster takes these when a collection is created; they cannot all be changed later (the shard count is
fixed at creation), so they are decided here, from settings, rather than left to the server's defaults: replicas so a
node can be lost, vectors and payloads on disk with int8 copies in RAM so a million points cost ~0.5 GB of memory
instead of ~2.5 GB, and reads that a majority of replicas agree on. Embedded Qdrant (Edge) is one shard on one
machine: it takes none of them (`VectorIndex` says so once).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # qdrant_client costs 0.6 s to import, and settings (which every process reads) build this
    from qdrant_client.http.models import ReadConsistencyType

Quantization = Literal["int8", "none"]
READ_CONSISTENCIES = ("majority", "quorum", "all")


@dataclass(frozen=True)
class ServerLayout:
    shards: int | None = None  # None: the server's own default (one per node in a cluster)
    replication_factor: int = 2
    write_consistency_factor: int = 1
    on_disk: bool = True  # vectors and payloads on disk; the HNSW graph and int8 copies stay in RAM
    quantization: Quantization = "int8"
    read_consistency: str = "majority"  # majority, quorum, all, or a number of replicas

    def __post_init__(self) -> None:
        if self.shards is not None and self.shards < 1:
            raise ValueError(f"Qdrant shards must be 1 or more (or unset), got {self.shards}")
        if self.replication_factor < 1 or self.write_consistency_factor < 1:
            raise ValueError("Qdrant's replication factor and write consistency factor must be 1 or more")
        if self.write_consistency_factor > self.replication_factor:
            raise ValueError(f"a write consistency factor of {self.write_consistency_factor} cannot be met with "
                             f"{self.replication_factor} replica(s)")
        if self.quantization not in ("int8", "none"):
            raise ValueError(f"Qdrant quantization is `int8` or `none`, got {self.quantization!r}")
        if not (self.read_consistency in READ_CONSISTENCIES
                or (self.read_consistency.isdigit() and int(self.read_consistency) >= 1)):
            raise ValueError(f"Qdrant read consistency is one of {', '.join(READ_CONSISTENCIES)} or a number of "
                             f"replicas, got {self.read_consistency!r}")

    def collection_settings(self, dimension: int) -> dict[str, Any]:
        """What `create_collection` sends to a server, besides the collection's name and metadata."""
        from qdrant_client import models

        settings: dict[str, Any] = {
            "vectors_config": models.VectorParams(size=dimension, distance=models.Distance.COSINE, on_disk=self.on_disk),
            "replication_factor": self.replication_factor,
            "write_consistency_factor": self.write_consistency_factor,
            "on_disk_payload": self.on_disk,
        }
        if self.shards is not None:
            settings["shard_number"] = self.shards
        if self.quantization == "int8":
            # always_ram: the int8 copies are what a query scans; the full vectors on disk only rescore the best.
            settings["quantization_config"] = models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=0.99, always_ram=True))
        return settings

    def consistency(self) -> int | ReadConsistencyType:
        """The read consistency a search sends: how many replicas must answer alike."""
        from qdrant_client.http.models import ReadConsistencyType

        if self.read_consistency.isdigit():
            return int(self.read_consistency)
        return ReadConsistencyType(self.read_consistency)

    def differs_from_default(self) -> list[str]:
        """The settings given other values than the defaults: what an embedded index ignores, named for the person."""
        default = ServerLayout()
        return [f"VISION_ASSETS_QDRANT_{f.name.upper()}" for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)]
