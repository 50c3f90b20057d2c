import nimbus

app = nimbus.App()


@app.http("/hello", methods=["GET"])
async def hello(req, ctx):
    # Each name's greeting count lives in the document container "greetings" (partition = name).
    name = req.query.get("name", "world")
    try:
        seen = await ctx.docs.patch("greetings", name, name, [{"op": "incr", "path": "/times", "value": 1}])
    except nimbus.NotFound:
        seen = await ctx.docs.create("greetings", {"id": name, "name": name, "times": 1})
    return {"hello": name, "times": seen["times"]}


@app.http("/api/me", methods=["GET"])
async def me(req, ctx):
    # The gateway verified the bearer token; its claims arrive with the request.
    return {"you": req.claims}


@app.http("/api/notes", methods=["POST"])
async def add_note(req, ctx):
    # A note's text goes to the blob container "notes"; its record, to the documents.
    body = await req.json()
    owner = req.claims["sub"]
    note = await ctx.docs.create("notes", {"id": body["id"], "owner": owner, "title": body["title"]})
    await ctx.blob.put("notes", "%s/%s.txt" % (owner, body["id"]), body.get("text", ""), content_type="text/plain")
    return nimbus.Response(note, status=201)


@app.http("/api/notes", methods=["GET"])
async def list_notes(req, ctx):
    owner = req.claims["sub"]
    notes = await ctx.docs.query(
        "notes", "SELECT c.id, c.title FROM c WHERE c.owner = @owner ORDER BY c.id", {"@owner": owner}
    )
    for note in notes:
        note["text"] = (await ctx.blob.get("notes", "%s/%s.txt" % (owner, note["id"]))).decode()
    return {"notes": notes}


@app.http("/api/ask", methods=["POST"])
async def ask(req, ctx):
    # The answer streams token by token from the AI gateway (here the local model) as it is generated,
    # metered to the caller (the token's `sub`).
    body = await req.json()
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": body["question"]}]
    # Greedy unless asked otherwise: a model this small strays when it samples.
    options = {"max_tokens": body.get("max_tokens", 200), "temperature": body.get("temperature", 0)}
    return nimbus.sse(ctx.ai.chat_stream(messages, **options))
