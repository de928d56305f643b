"""The dispatcher's HTTP/1.1 server protocol: uvicorn's server loop, a leaner request cycle.

uvicorn runs the process (sockets, workers, signals, lifespan, graceful shutdown) and hands
each connection to the protocol class named by its ``http`` option; this is that class, used
by ``dispatcher serve`` in place of uvicorn's own ``httptools`` protocol (``http_server =
"uvicorn"`` switches back). The application it runs is still plain ASGI 3; only the cost of
each request differs, which matters when every request of every tenant passes through:

- the response head is not written on ``http.response.start`` but together with the first
  body bytes: a small response leaves in one ``write`` instead of two. A head whose body does
  not follow in the same turn of the event loop (server-sent events, a slow upstream) is
  flushed at the end of that turn, so streaming clients still see it at once;
- header names and values are not matched against regular expressions one by one; the
  rendered head is checked once for stray CR or LF (the response-splitting guard);
- no ``asyncio.Event`` per request (a future only when ``receive`` must wait), no keep-alive
  timer per request (one per connection, re-armed only when it fires), a request body chunk
  is passed on without copying it into a ``bytearray`` first.

Everything else follows uvicorn's protocol: keep-alive, pipelining (one request at a time,
reading paused meanwhile), ``Expect: 100-continue``, flow control both ways, WebSocket upgrades
handed to uvicorn's WebSocket protocol, ``limit_concurrency``, graceful shutdown. A request
head larger than uvicorn's ``h11_max_incomplete_event_size`` is answered 431, a malformed one
400, both in the dispatcher's JSON error shape, and the connection is closed.

Deadlines (``dispatcher.asgi.ServerLimits``, from the application's lifespan state): a
request head must arrive whole within ``request_head_timeout`` of its first byte (408 and
close), and a request body still due may go ``request_body_timeout`` without a byte (the
application's ``receive`` raises ``RequestTimeout``; the connection closes after its answer).
One timer per connection carries these and the keep-alive timeout. A request the parser
refuses is never started, even if its head had parsed: nothing of it reaches the application.
Trailers of a chunked body are dropped; an absolute-form target's authority replaces the Host
header (RFC 9112 3.2.2).
"""

from dispatcher.h1server.protocol import H1Protocol

__all__ = ["H1Protocol"]
