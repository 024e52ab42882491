"""What a worker process readies once, where work starts: object storage (``storage``), quiet logs (``quiet``),
freed memory given back (``memory``); ``process.WorkerDoFn`` does it from every DoFn's ``setup()``."""
