import asyncio

import nimbus

app = nimbus.App()


@app.http("/hello", methods=["GET"])
async def hello(req, ctx):
    return {"hello": "world"}


@app.http("/drip", methods=["GET"])
async def drip(req, ctx):
    async def chunks():
        yield "first\n"
        await asyncio.sleep(0.2)
        yield "second\n"

    return nimbus.stream(chunks(), content_type="text/plain")
