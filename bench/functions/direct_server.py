"""The baseline for bench/functions.sh: the same trivial handler behind a plain asyncio HTTP/1.1
server (keep-alive, Content-Length), hit directly over TCP. Usage: direct_server.py PORT"""
import asyncio, json, sys

BODY = json.dumps({"hello": "world"}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            if head.startswith(b"GET /drip"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
                             b"6\r\nfirst\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.2)
                writer.write(b"7\r\nsecond\n\r\n0\r\n\r\n")
            else:
                writer.write(RESPONSE)
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
