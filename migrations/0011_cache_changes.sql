-- The read cache's invalidations leave the commit path (ADR 20, amended).
--
-- Migration 0010's row triggers called pg_notify: PostgreSQL serialises the commits of every
-- notifying transaction (a lock held through the commit's WAL flush), so every writer batch
-- that touched a product or an order's status waited for the others' fsyncs. Instead, one
-- statement-level trigger per change writes one row with the names of the cache entries the
-- statement changed into cache.changes, in the same transaction as the change: nothing is
-- invalidated for a change that rolls back, and nothing is lost when a process or the server
-- crashes. A drainer in each process (src/infra/cache.rs) deletes rows in batches, invalidates
-- their entries in Redis and commits only then.
DROP TRIGGER product_changed ON inventory.products;
DROP TRIGGER order_changed ON orders.orders;
DROP TRIGGER documents_changed ON files.documents;
DROP FUNCTION inventory.notify_product_changed();
DROP FUNCTION orders.notify_order_changed();
DROP FUNCTION files.notify_documents_changed();

CREATE SCHEMA IF NOT EXISTS cache;

-- A queue: rows live for milliseconds. Drained oldest first through the primary key. A row
-- older than the cache's TTL is useless (every entry cached before its change has expired) and
-- is pruned, so the table stays small where no drainer runs (cache disabled) or Redis is away.
CREATE TABLE cache.changes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entries    text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION inventory.products_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cache.changes (entries)
    SELECT array_agg(DISTINCT 'product:' || sku) FROM changed HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER products_inserted AFTER INSERT ON inventory.products
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION inventory.products_changed();
CREATE TRIGGER products_updated AFTER UPDATE ON inventory.products
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION inventory.products_changed();

-- Only a change of status or cancel reason changes what an order's entry shows.
CREATE FUNCTION orders.orders_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cache.changes (entries)
    SELECT array_agg(DISTINCT 'order:' || n.id)
    FROM new_rows n JOIN old_rows o USING (id)
    WHERE o.status IS DISTINCT FROM n.status OR o.cancel_reason IS DISTINCT FROM n.cancel_reason
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER orders_updated AFTER UPDATE ON orders.orders
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION orders.orders_changed();

-- An order's entry lists its documents.
CREATE FUNCTION files.documents_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cache.changes (entries)
    SELECT array_agg(DISTINCT 'order:' || order_id) FROM changed HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER documents_inserted AFTER INSERT ON files.documents
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION files.documents_changed();
CREATE TRIGGER documents_updated AFTER UPDATE ON files.documents
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION files.documents_changed();
