-- pgbench: what a 10-NN query costs a backend without a vector index, at the least: every item of
-- the `vectors` container read to the client (not even parsed or scored).
SELECT key, value FROM nimbus_kv WHERE ns = 'docs' AND key >= 'vectors/' AND key < 'vectors0';
