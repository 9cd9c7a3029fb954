/** What a page of the console is: its element, a title, and what to stop when leaving it. */
export interface View {
	el: HTMLElement;
	title: string;
	/** Runs after the element is in the document (a terminal needs its size). */
	mounted?(): void;
	dispose(): void;
}
