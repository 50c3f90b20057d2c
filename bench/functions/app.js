const { App, stream } = require("nimbus");
const app = new App();
app.http("/hello", { methods: ["GET"] }, async () => ({ hello: "world" }));
app.http("/drip", { methods: ["GET"] }, async () =>
  stream(
    (async function* () {
      yield "first\n";
      await new Promise((r) => setTimeout(r, 200));
      yield "second\n";
    })(),
    { contentType: "text/plain" },
  ),
);
module.exports = app;
