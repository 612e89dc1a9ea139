"""A small shop, written for Nameko 2: orders (nameko-sqlalchemy), stock
(nameko-redis), metrics (nameko-prometheus), traces (nameko-tracer) and
error reports (nameko-sentry)."""
