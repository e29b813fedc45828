-- Outbox rows are deleted once Kafka acknowledged them (ADR 14): every row left in an outbox is
-- unpublished, so the publication timestamp and the partial index of unpublished rows go. A
-- delete costs far less than the update that marked a row (which wrote a new row version and
-- an entry in every index) followed by a purge.
DELETE FROM orders.outbox WHERE published_at IS NOT NULL;
DROP INDEX orders.outbox_unpublished;
ALTER TABLE orders.outbox DROP COLUMN published_at;

DELETE FROM inventory.outbox WHERE published_at IS NOT NULL;
DROP INDEX inventory.inventory_outbox_unpublished;
ALTER TABLE inventory.outbox DROP COLUMN published_at;

DELETE FROM payment.outbox WHERE published_at IS NOT NULL;
DROP INDEX payment.payment_outbox_unpublished;
ALTER TABLE payment.outbox DROP COLUMN published_at;
