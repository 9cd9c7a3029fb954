-- 0006 is another change's; this one is numbered after it so the two can merge in either order.
ALTER TABLE "agent_commands" ADD COLUMN "idempotency_fingerprint" text;
