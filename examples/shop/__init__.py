"""A small shop: an ``orders`` service and an ``inventory`` service, each
with a database of its own through :mod:`examples.shop.database`.

Run both on the embedded broker, in one process::

    threadko run examples.shop.orders examples.shop.inventory \\
        --config examples/shop/config.yaml

``docs/tutorial.rst`` builds, runs, tests and deploys it step by step.
"""
