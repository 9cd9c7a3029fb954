/**
 * Builds the console (src/console/) into dist/console, the directory that
 * wrangler.toml's `[assets]` serves: index.html at the root, the bundle and
 * its stylesheet under assets/. `npm run dev`, `npm run build` and the tests
 * run it, so no bundle is checked in.
 */
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

export async function buildConsole(opts: { outDir?: string; quiet?: boolean } = {}): Promise<string> {
	const outDir = opts.outDir ?? join(root, "dist/console");
	rmSync(outDir, { recursive: true, force: true });
	mkdirSync(join(outDir, "assets"), { recursive: true });
	await build({
		entryPoints: { console: join(root, "src/console/main.ts") },
		outdir: join(outDir, "assets"),
		bundle: true,
		format: "esm",
		platform: "browser",
		target: ["chrome120", "firefox120", "safari17"],
		minify: true,
		sourcemap: true,
		// The stylesheet imports xterm's; esbuild writes console.css beside console.js.
		loader: { ".css": "css" },
		// The console's typecheck reads these through declarations (src/console/tsconfig.json);
		// the bundle takes the sources.
		alias: { "switchyard-client": join(root, "src/sdk/client.ts"), "switchyard-protocol": join(root, "src/protocol.ts") },
		logLevel: opts.quiet ? "warning" : "info",
		legalComments: "linked",
	});
	copyFileSync(join(root, "src/console/index.html"), join(outDir, "index.html"));
	return outDir;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
	const out = await buildConsole();
	process.stdout.write(`console built into ${out}\n`);
}
