// The Node.js baseline for bench/functions.sh: the same trivial handler on a plain http server.
const http = require("http");
const body = JSON.stringify({ hello: "world" });
http
  .createServer((req, res) => {
    if (req.url.startsWith("/drip")) {
      res.writeHead(200, { "content-type": "text/plain" });
      res.write("first\n");
      setTimeout(() => res.end("second\n"), 200);
      return;
    }
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  })
  .listen(Number(process.argv[2]), "127.0.0.1");
