-- The read cache (src/infra/cache.rs) is invalidated by these triggers: every change of a
-- product (price, name, stock, reservations), of an order's status, or of an order's documents
-- notifies channel orderflow_cache with the cache entry's name, delivered at commit.
CREATE FUNCTION inventory.notify_product_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderflow_cache', 'product:' || NEW.sku);
    RETURN NULL;
END $$;

CREATE TRIGGER product_changed AFTER INSERT OR UPDATE ON inventory.products
    FOR EACH ROW EXECUTE FUNCTION inventory.notify_product_changed();

CREATE FUNCTION orders.notify_order_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderflow_cache', 'order:' || NEW.id);
    RETURN NULL;
END $$;

CREATE TRIGGER order_changed AFTER UPDATE ON orders.orders
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       OR OLD.cancel_reason IS DISTINCT FROM NEW.cancel_reason)
    EXECUTE FUNCTION orders.notify_order_changed();

CREATE FUNCTION files.notify_documents_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderflow_cache', 'order:' || NEW.order_id);
    RETURN NULL;
END $$;

CREATE TRIGGER documents_changed AFTER INSERT OR UPDATE ON files.documents
    FOR EACH ROW EXECUTE FUNCTION files.notify_documents_changed();
