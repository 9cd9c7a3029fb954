/**
 * A headless Chromium for the console tests: Debian's `chromium` package
 * (playwright-core downloads no browser; `.ci/run` installs it with apt-get).
 * CHROMIUM_PATH points elsewhere.
 */
import { existsSync } from "node:fs";
import { type Browser, chromium } from "playwright-core";

export async function launchChromium(): Promise<Browser> {
	const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
	if (!existsSync(executablePath)) {
		throw new Error(`no Chromium at ${executablePath}: install Debian's package (apt-get install chromium) or set CHROMIUM_PATH`);
	}
	return chromium.launch({
		executablePath,
		headless: true,
		args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
	});
}
