/** Rewrites docs/api.md's error table from the error catalogue (`npm run docs:errors`). */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { errorTable } from '../http/error-catalogue.ts';

export const apiDoc = fileURLToPath(new URL('../docs/api.md', import.meta.url));
export const TABLE = /(<!-- error-table[^>]*-->\n)[\s\S]*?(\n<!-- \/error-table -->)/;

export function withErrorTable(markdown: string): string {
  if (!TABLE.test(markdown)) throw new Error('docs/api.md has no <!-- error-table --> markers');
  return markdown.replace(
    TABLE,
    (_all, open: string, close: string) => open + errorTable() + close,
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(apiDoc, withErrorTable(readFileSync(apiDoc, 'utf8')));
  console.log('docs/api.md: error table written from http/error-catalogue.ts');
}
