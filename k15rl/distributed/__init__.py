"""Several processes training one policy: FSDP2 sharding (`shard`) and the Ray backend (report §2.6)."""
