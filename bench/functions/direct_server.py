"""The Python baseline for bench/functions.sh: the same trivial handler behind a plain asyncio
HTTP/1.1 server (request line and headers parsed, the handler awaited, its result JSON-encoded;
keep-alive, Content-Length), hit directly over TCP. Usage: direct_server.py PORT"""
import asyncio, json, sys


async def hello(method, path, headers):
    return {"hello": "world"}


async def drip(writer):
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(b"7\r\nsecond\n\r\n0\r\n\r\n")


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if length:
                await reader.readexactly(length)
            if path.startswith("/drip"):
                await drip(writer)
            else:
                body = json.dumps(await hello(method, path, headers)).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


asyncio.run(main(int(sys.argv[1])))
