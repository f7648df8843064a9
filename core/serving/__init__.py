"""The prediction server (`opsloop serve`): Open Inference Protocol over a real ASGI server.

Modules, in the order a request meets them (docs/serving.md is the user's guide):

    app       the raw ASGI application, routes, `create_app(...)`
    protocol  request and response bodies: KServe v2 (JSON and binary tensors), JSON records
    schema    the bundle's input schema; checking requests into batches
    fastpath  scoring: the plugins' compiled row ops and predict where they have them, `LoadedModel.predict` otherwise
    model     the version being served, and the watcher that hot-swaps it when its alias moves
    predlog   the prediction log and feedback in SQLite, written off the request path
    logfile   the log's file: its tables, opening it, noticing it deleted or moved
    batchlog  a batch run's rows into the same log (and the JSON of rows sent as columns)
    segments  batch rows by column in the log: encoding, reading, joining labels
    feedback  feedback entries from JSON or files
    metrics   `/metrics` in the Prometheus text format
    server    uvicorn in the foreground (`run`) or on a thread (`ServerThread`); state files
    settings  `Settings`: every option, with the defaults `opsloop serve` uses
"""
