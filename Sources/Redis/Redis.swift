// The Redis client lives here (see the Redis module issue).
