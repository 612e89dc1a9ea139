from setuptools import find_packages, setup

with open('README.md', encoding='utf-8') as readme:
    long_description = readme.read()

setup(
    name='threadko',
    version='0.1.0',
    description=(
        "Nameko's microservices programming model on plain OS threads: "
        'no eventlet, no monkey-patching'),
    long_description=long_description,
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=['tests', 'tests.*', 'examples', 'bench', 'bench.*']),
    python_requires='>=3.9',
    install_requires=[
        'click>=7.0',
        'pika>=1.2',
        'PyYAML>=5.1',
        'waitress>=2.0',
        'werkzeug>=2.0',
    ],
    extras_require={
        # threadko.observability: METRICS_ADDRESS (Prometheus) and TRACING
        # (OpenTelemetry's API; an SDK is the application's choice)
        'metrics': ['prometheus_client>=0.12'],
        'sqlalchemy': ['SQLAlchemy>=1.4'],
        'tracing': ['opentelemetry-api>=1.15'],
        'websocket': ['wsproto>=1.2'],
        'test': [
            # tests/test_fork.py serves a Flask app under gunicorn --preload
            'flask>=2.0',
            'gunicorn>=20.0',
            'matplotlib>=3.5',  # tests/test_bench_report.py draws the chart
            'myst-parser>=0.18',  # docs/*.md in the Sphinx build
            # the shop example on MariaDB (tests/test_shop_example.py); builds
            # against libmariadb-dev, which scripts/bootstrap test installs
            'mysqlclient>=2.0',
            # tests/observability: the tracing tests export to the SDK's
            # in-memory exporter
            'opentelemetry-api>=1.15',
            'opentelemetry-sdk>=1.15',
            'prometheus_client>=0.12',
            # threadko.sqlalchemy on PostgreSQL
            'psycopg2-binary>=2.9',
            'pytest>=7.0',
            'pytest-timeout>=2.0',
            'sphinx>=5.0',
            'SQLAlchemy>=1.4',
            'wsproto>=1.2',
        ],
        # scripts/bench: the chart, the drivers of the blocking_db scenario
        # (mysqlclient builds against libmariadb-dev, found by pkg-config),
        # threadko.sqlalchemy's SQLAlchemy for the sqlalchemy_db scenario,
        # and wsproto for threadko.web.websocket and the websocket load
        # generator of the ws_rpc and ws_fanout scenarios
        'bench': [
            'matplotlib>=3.5',
            'mysqlclient>=2.0',
            # the observability overhead scenarios (rpc_seq and http with
            # metrics and tracing on)
            'opentelemetry-api>=1.15',
            'opentelemetry-sdk>=1.15',
            'prometheus_client>=0.12',
            'psycopg2-binary>=2.9',
            'SQLAlchemy>=1.4',
            'wsproto>=1.2',
        ],
        'dev': [
            'matplotlib>=3.5',
            'myst-parser>=0.18',
            'pytest>=7.0',
            'pytest-timeout>=2.0',
            'sphinx>=5.0',
            'tox>=3.0',
        ],
    },
    entry_points={
        'console_scripts': ['threadko=threadko.cli.main:main'],
        'pytest11': [
            'threadko=threadko.testing.plugin',
        ],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3 :: Only',
        'Intended Audience :: Developers',
        'Topic :: System :: Networking',
    ],
)
