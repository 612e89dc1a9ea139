"""Configuration keys, defaults and header names shared across threadko.

Key names and case are Nameko's, so an existing Nameko config file works as is.
"""

AMQP_URI_CONFIG_KEY = 'AMQP_URI'
WEB_SERVER_CONFIG_KEY = 'WEB_SERVER_ADDRESS'
RPC_EXCHANGE_CONFIG_KEY = 'rpc_exchange'
SERIALIZER_CONFIG_KEY = 'serializer'
SERIALIZERS_CONFIG_KEY = 'SERIALIZERS'
ACCEPT_CONFIG_KEY = 'ACCEPT'
HEARTBEAT_CONFIG_KEY = 'HEARTBEAT'
AMQP_SSL_CONFIG_KEY = 'AMQP_SSL'
TRANSPORT_OPTIONS_CONFIG_KEY = 'TRANSPORT_OPTIONS'
LOGIN_METHOD_CONFIG_KEY = 'LOGIN_METHOD'
SERVICE_CONTAINER_CLS_CONFIG_KEY = 'SERVICE_CONTAINER_CLS'
LOGGING_CONFIG_KEY = 'LOGGING'

MAX_WORKERS_CONFIG_KEY = 'max_workers'
PARENT_CALLS_CONFIG_KEY = 'parent_calls_tracked'
# threadko-only: how long stop()/kill() wait for a managed thread to finish
# after its extension was told to stop, before giving up on it with a warning.
THREAD_JOIN_TIMEOUT_CONFIG_KEY = 'THREAD_JOIN_TIMEOUT'
# threadko-only: how long `threadko run` lets a graceful stop take before it
# kills the services (below Kubernetes' default 30 s before SIGKILL)
SHUTDOWN_GRACE_PERIOD_CONFIG_KEY = 'SHUTDOWN_GRACE_PERIOD'
# threadko-only: how long `threadko run` waits for its services to start
# before it gives up (exit status 1); unset: as long as it takes
START_TIMEOUT_CONFIG_KEY = 'START_TIMEOUT'
# threadko-only: the retry policy of @event_handler and @consume handlers
# that do not pass retry= (a mapping of threadko.retry.Retry arguments)
HANDLER_RETRY_CONFIG_KEY = 'HANDLER_RETRY'
# threadko-only: 'classic' (Nameko 2's queues: no x-queue-type argument) or
# 'quorum': the type of the durable queues the instances of a service share
# (RPC service queues, reliable SERVICE_POOL and SINGLETON event handler
# queues); see threadko.amqp.entities.shared_queue_arguments
QUEUE_TYPE_CONFIG_KEY = 'QUEUE_TYPE'
# threadko-only: the x-delivery-limit of those queues when they are quorum
# queues (null or 0: no limit)
QUEUE_DELIVERY_LIMIT_CONFIG_KEY = 'QUEUE_DELIVERY_LIMIT'
# threadko-only: how many seconds a publish waits while the broker blocks
# publishing (a memory or disk alarm) before it raises PublishBlocked; null
# waits as long as the alarm lasts (Nameko's behaviour)
PUBLISH_BLOCKED_TIMEOUT_CONFIG_KEY = 'PUBLISH_BLOCKED_TIMEOUT'
# threadko-only: the default timeout (seconds) of the RPC proxies injected
# into services (RpcProxy/ServiceRpc, ClusterRpc); null waits forever
RPC_TIMEOUT_CONFIG_KEY = 'RPC_TIMEOUT'

DEFAULT_MAX_WORKERS = 10
DEFAULT_PARENT_CALLS_TRACKED = 10
DEFAULT_SERIALIZER = 'json'
DEFAULT_RETRY_POLICY = {'max_retries': 3}
DEFAULT_HEARTBEAT = 60
DEFAULT_TRANSPORT_OPTIONS = {
    'max_retries': 3,
    'interval_start': 2,
    'interval_step': 1,
    'interval_max': 5,
}
DEFAULT_AMQP_URI = 'memory://'
DEFAULT_THREAD_JOIN_TIMEOUT = 10.0
DEFAULT_SHUTDOWN_GRACE_PERIOD = 25.0
DEFAULT_PUBLISH_BLOCKED_TIMEOUT = 30.0
DEFAULT_RPC_TIMEOUT = None  # wait forever, as Nameko
CLASSIC_QUEUE_TYPE = 'classic'
QUORUM_QUEUE_TYPE = 'quorum'
DEFAULT_QUEUE_TYPE = CLASSIC_QUEUE_TYPE
# RabbitMQ 4's default for quorum queues (3.x has none: a message requeued
# by a handler that always fails would loop forever)
DEFAULT_QUEUE_DELIVERY_LIMIT = 20
# seconds of silence before a websocket is pinged (threadko.web.front; here
# for the config checks, which must not import waitress)
DEFAULT_WEBSOCKET_PING_INTERVAL = 20.0

CALL_ID_STACK_CONTEXT_KEY = 'call_id_stack'
AUTH_TOKEN_CONTEXT_KEY = 'auth_token'
LANGUAGE_CONTEXT_KEY = 'language'
USER_ID_CONTEXT_KEY = 'user_id'
USER_AGENT_CONTEXT_KEY = 'user_agent'

HEADER_PREFIX = 'nameko'  # on the wire, for interoperability with Nameko
NON_PERSISTENT = 1
PERSISTENT = 2
