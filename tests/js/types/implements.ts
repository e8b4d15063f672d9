// The implementation (declarations generated from its JSDoc) has every export the hand-written
// static/hubbub.d.ts declares, with a type assignable to the declared one; and it exports
// nothing the declarations leave out.
import type * as Declared from "../../../static/hubbub.js";
import type * as Implemented from "./generated/hubbub.js";

declare const implemented: typeof Implemented;
export const declared: typeof Declared = implemented;

type Undeclared = Exclude<keyof typeof Implemented, keyof typeof Declared>;
export const everyExportDeclared: [Undeclared] extends [never] ? true : Undeclared = true;
