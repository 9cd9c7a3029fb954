/**
 * A bounded memory of recent command outcomes, oldest evicted first. The
 * server delivers at least once; this is what turns a redelivery into a
 * resent result instead of a second execution.
 */
export class Recent<V> {
	private readonly map = new Map<string, V>();

	constructor(private readonly capacity: number) {}

	get(id: string): V | undefined {
		return this.map.get(id);
	}

	has(id: string): boolean {
		return this.map.has(id);
	}

	set(id: string, value: V): void {
		this.map.delete(id);
		this.map.set(id, value);
		while (this.map.size > this.capacity) {
			const oldest = this.map.keys().next().value;
			if (oldest === undefined) break;
			this.map.delete(oldest);
		}
	}

	delete(id: string): void {
		this.map.delete(id);
	}

	get size(): number {
		return this.map.size;
	}
}
