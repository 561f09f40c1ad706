// The memcached client lives here (see the Memcache module issue).
