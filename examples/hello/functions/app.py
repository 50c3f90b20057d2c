import nimbus

app = nimbus.App()


@app.http("/hello", methods=["GET"])
async def hello(req, ctx):
    return {"hello": req.query.get("name", "world")}


@app.http("/api/me", methods=["GET"])
async def me(req, ctx):
    # The gateway verified the bearer token; its claims arrive with the request.
    return {"you": req.claims}
