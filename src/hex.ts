/** The first `bytes` bytes as lowercase hex: short, stable names for digests (key ids, payload digests). */
export function hexPrefix(data: ArrayBuffer | Uint8Array, bytes: number): string {
	return [...new Uint8Array(data).slice(0, bytes)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
