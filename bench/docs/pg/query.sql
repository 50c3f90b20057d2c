-- pgbench: indexed equality, directly (-D items=N): the index records of one group (a key range of
-- `docs-index`), joined to the 10 items they name, in one statement.
\set g random(0, :items / 10 - 1)
SELECT i.ns, i.key, i.value, i.version
  FROM nimbus_kv x
  JOIN nimbus_kv i ON i.ns = 'docs' AND i.key = 'items/' || substr(x.key, length('items/%2Fgroup/"g' || :g::text || '"/') + 1)
 WHERE x.ns = 'docs-index'
   AND x.key >= 'items/%2Fgroup/"g' || :g::text || '"/'
   AND x.key < 'items/%2Fgroup/"g' || :g::text || '"0';
