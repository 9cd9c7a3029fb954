/**
 * Prints what tests report about themselves with `annotate()` (the hostile
 * input suite's counts), which the default reporter shows only for failures.
 */
import type { Reporter, TestCase } from "vitest/node";

export default class AnnotationReporter implements Reporter {
	onTestCaseResult(test: TestCase): void {
		for (const a of test.annotations()) process.stdout.write(`  [${test.name}] ${a.message}\n`);
	}
}
