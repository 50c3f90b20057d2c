-- pgbench: point insert, directly. One transaction: the item record and its index record, versions
-- from the store's sequence (what Nimbus writes for an item of `items`, minus its advisory lock and
-- the per-record round trips). Ids are random 62-bit numbers; ON CONFLICT is the "absent" check.
\set i random(1, 4000000000000000000)
\set p :i % 100
BEGIN;
INSERT INTO nimbus_kv (ns, key, value, version)
  VALUES ('docs', 'items/"p' || :p::text || '"/d' || :i::text,
          convert_to('{"id":"d' || :i::text || '","pk":"p' || :p::text || '","group":"d' || :i::text
            || '","n":' || :i::text || ',"text":"the quick brown fox jumps over the lazy dog, then it rests a while","_ts":1764000000}', 'UTF8'),
          nextval('nimbus_kv_version'))
  ON CONFLICT DO NOTHING;
INSERT INTO nimbus_kv (ns, key, value, version)
  VALUES ('docs-index', 'items/%2Fgroup/"d' || :i::text || '"/"p' || :p::text || '"/d' || :i::text, '\x'::bytea,
          nextval('nimbus_kv_version'))
  ON CONFLICT DO NOTHING;
END;
