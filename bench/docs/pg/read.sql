-- pgbench: point read, directly: one of the preloaded items by primary key (-D items=N).
\set i random(0, :items - 1)
\set p :i % 100
SELECT ns, key, value, version FROM nimbus_kv WHERE ns = 'docs' AND key = 'items/"p' || :p::text || '"/r' || :i::text;
