"""The HTTP gateway: validates jobs, writes them to Redis, enqueues them by task name; never imports torch."""
