"""A live page: prices arrive as AMQP events and are pushed to browsers
over websockets.

``price_ticker`` handles the ``price_changed`` events of the ``market``
service and forwards each one, through the websocket hub, to the sockets
subscribed to its symbol. Its page, ``GET /``, is plain HTML and
JavaScript (nothing is downloaded): it connects to ``/ws`` on the host and
port it came from, subscribes to a few symbols by websocket RPC, and shows
each price as it arrives.

Needs wsproto (``pip install "threadko[websocket]"``). ``python -m
examples`` runs it on the embedded broker, with prices dispatched every
second; open http://localhost:8000/. Or run it on RabbitMQ and dispatch
prices yourself::

    threadko run examples.websocket_live --broker amqp://guest:guest@localhost
    # open http://localhost:8000/?symbols=ACME,GLOBEX, then:
    threadko shell --broker amqp://guest:guest@localhost
    >>> n.dispatch_event("market", "price_changed", {"symbol": "ACME", "price": 101.5})
"""

import re

from threadko.events import BROADCAST, event_handler
from threadko.web.handlers import http
from threadko.web.websocket import WebSocketHubProvider, rpc

SYMBOL = re.compile(r"[A-Z0-9.]{1,12}")


def check_symbol(symbol):
    """A symbol from a browser, which may send anything."""
    if not isinstance(symbol, str) or not SYMBOL.fullmatch(symbol):
        raise ValueError("not a symbol: {!r}".format(symbol))
    return symbol


class PriceTicker:
    name = "price_ticker"

    hub = WebSocketHubProvider()

    # each instance of the service holds websockets of its own, so each
    # needs every price: a BROADCAST handler (a queue per instance)
    @event_handler("market", "price_changed",
                   handler_type=BROADCAST, reliable_delivery=False)
    def price_changed(self, payload):
        # {"symbol": "ACME", "price": 101.5}: to the channel "ACME"
        self.hub.broadcast(payload["symbol"], "price", payload)

    # websocket RPC: the page sends {"method": "subscribe", "data":
    # {"symbol": "ACME"}, "correlation_id": "1"}; the socket's id comes first
    @rpc(expected_exceptions=ValueError)
    def subscribe(self, socket_id, symbol):
        self.hub.subscribe(socket_id, check_symbol(symbol))
        return symbol

    @rpc(expected_exceptions=ValueError)
    def unsubscribe(self, socket_id, symbol):
        self.hub.unsubscribe(socket_id, check_symbol(symbol))
        return symbol

    @http("GET", "/")
    def page(self, request):
        return 200, {"Content-Type": "text/html; charset=utf-8"}, PAGE


PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Live prices</title>
<style>
  body { font-family: sans-serif; margin: 2em; }
  table { border-collapse: collapse; margin: 1em 0; }
  th, td { padding: 0.3em 1em; border-bottom: 1px solid #ddd; text-align: left; }
  .price { text-align: right; font-variant-numeric: tabular-nums; }
  .up { color: #080; }
  .down { color: #c00; }
  #log { font-family: monospace; color: #555; }
</style>
</head>
<body>
<h1>Live prices</h1>
<p id="status">connecting&hellip;</p>
<form id="watch">
  <input id="symbol" placeholder="symbol, e.g. ACME" autocomplete="off">
  <button>Watch</button>
</form>
<table>
  <thead><tr><th>Symbol</th><th>Price</th><th>Updated</th><th></th></tr></thead>
  <tbody id="prices"></tbody>
</table>
<ul id="log"></ul>
<script>
"use strict";

// the symbols to watch: ?symbols=ACME,GLOBEX in the url, or these
const symbols = (new URLSearchParams(location.search).get("symbols")
                 || "ACME,GLOBEX,INITECH").split(",");

// the service's websocket: /ws on the host and port this page came from
const socket = new WebSocket(
  (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");

// websocket RPC: send {method, data, correlation_id}; the answer is a
// "result" message with the same correlation_id
const calls = new Map();
let lastId = 0;

function call(method, data) {
  return new Promise((resolve, reject) => {
    const correlation_id = String(++lastId);
    calls.set(correlation_id, {resolve, reject});
    socket.send(JSON.stringify({method, data, correlation_id}));
  });
}

socket.onmessage = (message) => {
  const msg = JSON.parse(message.data);
  if (msg.type === "result") {
    const {resolve, reject} = calls.get(msg.correlation_id);
    calls.delete(msg.correlation_id);
    if (msg.success) {
      resolve(msg.data);
    } else {
      reject(new Error(msg.error.exc_type + ": " + msg.error.value));
    }
  } else if (msg.event === "connected") {  // the first message
    setStatus("connected");
    symbols.forEach(watch);
  } else if (msg.event === "price") {  // the hub's broadcast
    showPrice(msg.data);
  }
};
socket.onclose = () => setStatus("disconnected: reload the page to reconnect");

// leaving the page, which the browser may keep in its back/forward cache:
// close the socket, so that the service forgets its subscriptions; coming
// back to it: start over
window.addEventListener("pagehide", () => socket.close());
window.addEventListener("pageshow", (event) => {
  if (event.persisted) location.reload();
});

function watch(symbol) {
  call("subscribe", {symbol})
    .then(() => { addRow(symbol); log("watching " + symbol); })
    .catch((error) => log("cannot watch " + symbol + ": " + error.message));
}

function unwatch(symbol) {
  call("unsubscribe", {symbol})
    .then(() => { row(symbol).remove(); log("stopped watching " + symbol); })
    .catch((error) => log("cannot stop watching " + symbol + ": " + error.message));
}

function showPrice({symbol, price}) {
  log(symbol + " " + price.toFixed(2));
  const tr = row(symbol);
  if (!tr) return;
  const cell = tr.querySelector(".price");
  const previous = parseFloat(cell.textContent);
  cell.textContent = price.toFixed(2);
  cell.className = "price " + (price > previous ? "up" : price < previous ? "down" : "");
  tr.querySelector(".updated").textContent = new Date().toLocaleTimeString();
}

// the page: a row per symbol watched, and a log (newest first)

function row(symbol) {
  return document.getElementById("row-" + symbol);
}

function addRow(symbol) {
  const tr = document.createElement("tr");
  tr.id = "row-" + symbol;
  for (const name of ["symbol", "price", "updated", "remove"]) {
    tr.appendChild(document.createElement("td")).className = name;
  }
  tr.querySelector(".symbol").textContent = symbol;
  tr.querySelector(".price").textContent = "–";
  const button = tr.querySelector(".remove").appendChild(document.createElement("button"));
  button.textContent = "×";
  button.title = "stop watching " + symbol;
  button.onclick = () => unwatch(symbol);
  document.getElementById("prices").appendChild(tr);
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

function log(text) {
  const list = document.getElementById("log");
  const item = document.createElement("li");
  item.textContent = new Date().toLocaleTimeString() + "  " + text;
  list.prepend(item);
  if (list.children.length > 100) list.lastChild.remove();
}

document.getElementById("watch").onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById("symbol");
  const symbol = input.value.trim().toUpperCase();
  input.value = "";
  if (symbol && !row(symbol)) watch(symbol);
};
</script>
</body>
</html>
"""
