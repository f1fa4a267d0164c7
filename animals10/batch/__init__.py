"""Bulk classification: a folder, bucket or manifest of photos -> Parquet predictions, with Ray Data.

sources    where the photos come from: units and shards with stable ids (no Ray)
manifests  --input-list: text, CSV, Parquet and S3 Inventory manifests, read as streams (no Ray)
parts      the output: one atomically written Parquet part per shard, its counts inside
steps      the work inside Ray: list shards, decode them, classify and write them
pacing     how far listing may run ahead of classification (the gate actor's rules, no Ray)
job        the driver: plan, pipeline, summary

Its command line is `animals10.cli.infer`.
"""
