"""Serving over HTTP with Ray Serve: settings (config), request parsing and limits (requests), merging
batches (batching) and the deployment (app). The command is `animals10.cli.serve`."""
